//! `write_lat`: perftest's `ib_write_lat` over this project's soft-RoCE device, with
//! the same flags, exchange and output. `write_lat --help` lists the flags; with
//! no server and no device it runs both sides over loopback.

fn main() -> std::process::ExitCode {
    examples::perftest::main(examples::perftest::Tool::WriteLat)
}
