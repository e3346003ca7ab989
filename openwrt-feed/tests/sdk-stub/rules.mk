# Stand-in for an OpenWrt buildroot's rules.mk, for tests/run.sh: just the
# variables net/tandem/Makefile uses, with OpenWrt's values.
INCLUDE_DIR:=$(TOPDIR)/include
BUILD_DIR:=$(TOPDIR)/build_dir
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
LN:=ln -sf
CP:=cp -fpR
