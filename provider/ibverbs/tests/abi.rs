//! The built `libibverbs.so` as the dynamic loader sees it: every symbol
//! version of the committed tables resolves (and the tables match Debian's
//! library when it and `objdump` are installed), and verbs the device does
//! not support fail with the errno verbs prescribes instead of crashing.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Debian's library, whose symbol versions the tables reproduce.
const DEBIAN_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/libibverbs.so.1";

/// The library cargo built for this test run.
fn library_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let lib = exe.parent().expect("deps directory").join("libibverbs.so");
    assert!(lib.exists(), "{} not built", lib.display());
    lib
}

/// A `dlopen` handle to the built library, for the whole test run.
struct Library(*mut c_void);

// SAFETY: dl handles may be used from any thread.
unsafe impl Send for Library {}
// SAFETY: as above; dlvsym is thread-safe.
unsafe impl Sync for Library {}

fn library() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| {
        let path =
            CString::new(library_path().into_os_string().into_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path; the handle is kept for the process.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen failed");
        Library(handle)
    })
}

/// The address of `name@version`, or NULL.
fn symbol(name: &str, version: &str) -> *mut c_void {
    let (name, version) = (
        CString::new(name).expect("name"),
        CString::new(version).expect("version"),
    );
    // SAFETY: a live handle and NUL-terminated strings.
    unsafe { libc::dlvsym(library().0, name.as_ptr(), version.as_ptr()) }
}

/// The calling thread's errno.
fn errno() -> c_int {
    // SAFETY: the thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// (version, name, hidden) of every export in the committed tables.
fn committed_exports() -> BTreeSet<(String, String, bool)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(dir.join("libibverbs.map")).expect("libibverbs.map");
    let mut set = BTreeSet::new();
    let mut version = String::new();
    for line in map.lines().map(str::trim) {
        if let Some(v) = line.strip_suffix(" {") {
            version = v.to_owned();
        } else if let Some(name) = line.strip_suffix(';').filter(|n| !n.contains(['}', ' '])) {
            set.insert((version.clone(), name.to_owned(), false));
        }
    }
    let exports = std::fs::read_to_string(dir.join("src/exports.rs")).expect("exports.rs");
    for line in exports.lines() {
        if let Some(rest) = line.trim().strip_prefix("\".symver ") {
            let target = rest
                .split(", ")
                .nth(1)
                .expect(".symver target")
                .trim_end_matches("\",");
            let (name, version) = target.split_once('@').expect("name@version");
            set.insert((version.to_owned(), name.to_owned(), true));
        }
    }
    set
}

#[test]
fn every_committed_symbol_version_resolves() {
    let exports = committed_exports();
    assert!(exports.len() > 170, "only {} exports parsed", exports.len());
    for (version, name, _) in &exports {
        assert!(
            !symbol(name, version).is_null(),
            "{name}@{version} does not resolve"
        );
    }
}

#[test]
fn committed_tables_match_debians_library() {
    let Ok(out) = Command::new("objdump")
        .args(["-T", DEBIAN_LIBRARY])
        .output()
    else {
        eprintln!("skipped: no objdump");
        return;
    };
    if !out.status.success() {
        eprintln!("skipped: no {DEBIAN_LIBRARY}");
        return;
    }
    let debian: BTreeSet<(String, String, bool)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            (l.contains(" DF ") || l.contains(" DO "))
                && !l.contains("*UND*")
                && !l.contains("*ABS*")
                && l.contains("IBVERBS")
        })
        .filter_map(|l| {
            let mut fields = l.split_whitespace().rev();
            let name = fields.next()?;
            let version = fields.next()?;
            let hidden = version.starts_with('(');
            Some((
                version.trim_matches(['(', ')']).to_owned(),
                name.to_owned(),
                hidden,
            ))
        })
        .collect();
    assert_eq!(committed_exports(), debian);
}

#[test]
fn unsupported_and_bad_calls_fail_cleanly() {
    type OpenDevice = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
    type CreateSrq = unsafe extern "C" fn(*mut c_void, *mut c_void) -> *mut c_void;
    type IntCall = unsafe extern "C" fn() -> c_int;
    type ListCall = unsafe extern "C" fn(*mut c_int) -> *mut *mut c_void;

    // SAFETY: the symbols have these C signatures; the calls pass NULL
    // where the library must refuse it.
    unsafe {
        let open: OpenDevice = std::mem::transmute(symbol("ibv_open_device", "IBVERBS_1.1"));
        assert!(open(std::ptr::null_mut()).is_null());
        assert_eq!(errno(), libc::EINVAL);

        let srq: CreateSrq = std::mem::transmute(symbol("ibv_create_srq", "IBVERBS_1.1"));
        assert!(srq(std::ptr::null_mut(), std::ptr::null_mut()).is_null());
        assert_eq!(errno(), libc::EOPNOTSUPP);

        let cmd: IntCall = std::mem::transmute(symbol("ibv_cmd_create_qp", "IBVERBS_PRIVATE_34"));
        assert_eq!(cmd(), libc::EOPNOTSUPP);

        let old_list: ListCall = std::mem::transmute(symbol("ibv_get_device_list", "IBVERBS_1.0"));
        assert!(old_list(std::ptr::null_mut()).is_null());
        assert_eq!(errno(), libc::ENOSYS);
    }
}

#[test]
fn device_list_names_the_loopback_device() {
    type ListCall = unsafe extern "C" fn(*mut c_int) -> *mut *mut c_void;
    type FreeCall = unsafe extern "C" fn(*mut *mut c_void);
    type NameCall = unsafe extern "C" fn(*mut c_void) -> *const c_char;
    // SAFETY: the symbols have these signatures; the list is freed once
    // and its entries read before that.
    unsafe {
        let list: ListCall = std::mem::transmute(symbol("ibv_get_device_list", "IBVERBS_1.1"));
        let free: FreeCall = std::mem::transmute(symbol("ibv_free_device_list", "IBVERBS_1.1"));
        let name: NameCall = std::mem::transmute(symbol("ibv_get_device_name", "IBVERBS_1.1"));
        let mut n: c_int = -1;
        let devices = list(&mut n);
        assert!(!devices.is_null() && n > 0);
        let names: Vec<String> = (0..n as usize)
            .map(|i| {
                CStr::from_ptr(name(*devices.add(i)))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert!(
            (*devices.add(n as usize)).is_null(),
            "list not NULL-terminated"
        );
        free(devices);
        assert!(
            names.iter().any(|d| d == "srxe-lo"),
            "no srxe-lo in {names:?}"
        );
    }
}

#[test]
fn status_strings_are_rdma_cores() {
    type StatusStr = unsafe extern "C" fn(u32) -> *const c_char;
    // SAFETY: the symbol has this signature and returns static strings.
    unsafe {
        let status: StatusStr = std::mem::transmute(symbol("ibv_wc_status_str", "IBVERBS_1.1"));
        assert_eq!(CStr::from_ptr(status(0)), c"success");
        assert_eq!(
            CStr::from_ptr(status(12)),
            c"transport retry counter exceeded"
        );
        assert_eq!(CStr::from_ptr(status(9999)), c"unknown");
    }
}

/// NULL where an object belongs is refused with an error, never a crash,
/// by every verb that takes an object.
#[test]
fn null_objects_are_refused() {
    type P = *mut c_void;
    let v = "IBVERBS_1.1";
    // SAFETY: each symbol is called with its C arity (pointers and
    // integers, NULL for every object) and must not dereference NULL.
    unsafe {
        let ptr_of_ptr: unsafe extern "C" fn(P) -> P =
            std::mem::transmute(symbol("ibv_alloc_pd", v));
        assert!(ptr_of_ptr(std::ptr::null_mut()).is_null());
        for name in [
            "ibv_close_device",
            "ibv_dealloc_pd",
            "ibv_dereg_mr",
            "ibv_destroy_cq",
            "ibv_destroy_qp",
        ] {
            let f: unsafe extern "C" fn(P) -> c_int = std::mem::transmute(symbol(name, v));
            assert_ne!(f(std::ptr::null_mut()), 0, "{name}(NULL)");
        }
        let destroy_channel: unsafe extern "C" fn(P) -> c_int =
            std::mem::transmute(symbol("ibv_destroy_comp_channel", "IBVERBS_1.0"));
        assert_ne!(destroy_channel(std::ptr::null_mut()), 0);
        let create_channel: unsafe extern "C" fn(P) -> P =
            std::mem::transmute(symbol("ibv_create_comp_channel", "IBVERBS_1.0"));
        assert!(create_channel(std::ptr::null_mut()).is_null());
        let reg_mr: unsafe extern "C" fn(P, P, usize, c_int) -> P =
            std::mem::transmute(symbol("ibv_reg_mr", v));
        assert!(reg_mr(std::ptr::null_mut(), std::ptr::null_mut(), 4096, 1).is_null());
        let create_cq: unsafe extern "C" fn(P, c_int, P, P, c_int) -> P =
            std::mem::transmute(symbol("ibv_create_cq", v));
        assert!(
            create_cq(
                std::ptr::null_mut(),
                16,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0
            )
            .is_null()
        );
        let create_qp: unsafe extern "C" fn(P, P) -> P =
            std::mem::transmute(symbol("ibv_create_qp", v));
        assert!(create_qp(std::ptr::null_mut(), std::ptr::null_mut()).is_null());
        let modify_qp: unsafe extern "C" fn(P, P, c_int) -> c_int =
            std::mem::transmute(symbol("ibv_modify_qp", v));
        assert_ne!(modify_qp(std::ptr::null_mut(), std::ptr::null_mut(), 1), 0);
        let query_qp: unsafe extern "C" fn(P, P, c_int, P) -> c_int =
            std::mem::transmute(symbol("ibv_query_qp", v));
        assert_ne!(
            query_qp(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut()
            ),
            0
        );
        let query: unsafe extern "C" fn(P, P) -> c_int =
            std::mem::transmute(symbol("ibv_query_device", v));
        assert_ne!(query(std::ptr::null_mut(), std::ptr::null_mut()), 0);
        let query_port: unsafe extern "C" fn(P, u8, P) -> c_int =
            std::mem::transmute(symbol("ibv_query_port", v));
        assert_ne!(query_port(std::ptr::null_mut(), 1, std::ptr::null_mut()), 0);
        let query_gid: unsafe extern "C" fn(P, u8, c_int, P) -> c_int =
            std::mem::transmute(symbol("ibv_query_gid", v));
        assert_ne!(
            query_gid(std::ptr::null_mut(), 1, 0, std::ptr::null_mut()),
            0
        );
        let cq_event: unsafe extern "C" fn(P, P, P) -> c_int =
            std::mem::transmute(symbol("ibv_get_cq_event", v));
        assert_ne!(
            cq_event(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut()
            ),
            0
        );
        let async_event: unsafe extern "C" fn(P, P) -> c_int =
            std::mem::transmute(symbol("ibv_get_async_event", v));
        assert_ne!(async_event(std::ptr::null_mut(), std::ptr::null_mut()), 0);
        let name: unsafe extern "C" fn(P) -> *const c_char =
            std::mem::transmute(symbol("ibv_get_device_name", v));
        assert!(name(std::ptr::null_mut()).is_null());
        let free: unsafe extern "C" fn(P) = std::mem::transmute(symbol("ibv_free_device_list", v));
        free(std::ptr::null_mut());
        let to_ex: unsafe extern "C" fn(P) -> P =
            std::mem::transmute(symbol("ibv_qp_to_qp_ex", "IBVERBS_1.6"));
        assert!(to_ex(std::ptr::null_mut()).is_null());
        let read_sysfs: unsafe extern "C" fn(P, P, P, usize) -> c_int =
            std::mem::transmute(symbol("ibv_read_sysfs_file", "IBVERBS_1.0"));
        assert_eq!(
            read_sysfs(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0
            ),
            -1
        );
    }
}
