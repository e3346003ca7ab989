# Stand-in for OpenWrt's include/package.mk, for tests/run.sh. It does what
# the real one does with a package Makefile's definitions, far enough to
# check them without an SDK:
#  - BuildPackage evaluates Package/<name> and fails on a missing TITLE,
#    CATEGORY or SECTION (as the real one does), then writes the package's
#    metadata under $(STUB_OUT): depends, build-depends, conffiles, prerm,
#    version, source-dir.
#  - `make prepare` runs Build/Prepare, `make compile` runs Build/Compile,
#    `make install DEST=dir` runs Package/<name>/install into dir.
PKG_BUILD_DIR ?= $(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)
PKG_INSTALL_DIR ?= $(PKG_BUILD_DIR)/ipkg-install

define BuildPackage
  $$(eval $$(Package/$(1)))
  $$(foreach f,TITLE CATEGORY SECTION,$$(if $$($$(f)),,$$(error Package/$(1) is missing the $$(f) field)))
  $$(if $(STUB_OUT),$$(file >$(STUB_OUT)/depends,$$(DEPENDS)))
  $$(if $(STUB_OUT),$$(file >$(STUB_OUT)/build-depends,$$(PKG_BUILD_DEPENDS)))
  $$(if $(STUB_OUT),$$(file >$(STUB_OUT)/conffiles,$$(Package/$(1)/conffiles)))
  $$(if $(STUB_OUT),$$(file >$(STUB_OUT)/prerm,$$(Package/$(1)/prerm)))
  $$(if $(STUB_OUT),$$(file >$(STUB_OUT)/version,$$(PKG_VERSION)))
  $$(if $(STUB_OUT),$$(file >$(STUB_OUT)/source-dir,$$(TANDEM_SOURCE_DIR)))
  $$(if $(STUB_OUT),$$(file >$(STUB_OUT)/file-depends,$$(PKG_FILE_DEPENDS)))
endef

.PHONY: metadata prepare compile install
metadata:
	@true
prepare:
	rm -rf $(PKG_BUILD_DIR)
	mkdir -p $(PKG_BUILD_DIR)
	$(Build/Prepare)
compile:
	$(Build/Compile)
install:
	$(call Package/$(PKG_NAME)/install,$(DEST))
