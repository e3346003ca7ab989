# Stand-in for openwrt/packages lang/rust/rust-package.mk, for
# tests/run.sh. Same interface: RUST_ARCH_DEPENDS, Build/Compile/Cargo
# (<path of the crate inside PKG_BUILD_DIR>), RustBinPackage. Instead of
# `cargo install` it checks that the prepared workspace loads and that the
# crate path exists, and prints the install command the real one runs.
RUST_ARCH_DEPENDS:=@(aarch64||arm||i386||loongarch64||mips||mips64||mips64el||mipsel||powerpc||powerpc64||riscv64||x86_64)

define Build/Compile/Cargo
	test -f "$(PKG_BUILD_DIR)/$(strip $(1))/Cargo.toml"
	cd "$(PKG_BUILD_DIR)" && cargo metadata --offline --no-deps --format-version 1 >/dev/null
	@echo "cargo install -v --profile release --root $(PKG_INSTALL_DIR) --path $(PKG_BUILD_DIR)/$(strip $(1)) --locked"
endef

define RustBinPackage
endef

Build/Compile=$(call Build/Compile/Cargo)
