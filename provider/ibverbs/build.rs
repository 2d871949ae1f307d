//! Links the cdylib as rdma-core's `libibverbs.so.1`: its SONAME and the
//! symbol versions of `libibverbs.map` (Debian's rdma-core 44, amd64; the
//! exports exist on x86-64 only, see `src/lib.rs`).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=libibverbs.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libibverbs.so.1");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/libibverbs.map");
    }
}
