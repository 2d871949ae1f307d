//! With feature `link`: compiles the wrappers of `<infiniband/verbs.h>`'s
//! static inline verbs (`src/static_fns.c`, generated with the bindings)
//! and links the system's `libibverbs`. Without it, nothing to build.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "link")]
    link();
}

#[cfg(feature = "link")]
fn link() {
    println!("cargo:rerun-if-changed=src/static_fns.c");
    if !std::path::Path::new("/usr/include/infiniband/verbs.h").exists()
        && std::env::var_os("CPATH").is_none()
    {
        println!(
            "cargo:warning=<infiniband/verbs.h> not found: feature `link` needs rdma-core's headers (Debian: apt-get install libibverbs-dev)"
        );
    }
    cc::Build::new()
        .file("src/static_fns.c")
        .warnings(false)
        .compile("verbs_static_fns");
    println!("cargo:rustc-link-lib=dylib=ibverbs");
}
