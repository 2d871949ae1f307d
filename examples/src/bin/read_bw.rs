//! `read_bw`: perftest's `ib_read_bw` over this project's soft-RoCE device, with
//! the same flags, exchange and output. `read_bw --help` lists the flags; with
//! no server and no device it runs both sides over loopback.

fn main() -> std::process::ExitCode {
    examples::perftest::main(examples::perftest::Tool::ReadBw)
}
