//! `send_bw`: perftest's `ib_send_bw` over this project's soft-RoCE device, with
//! the same flags, exchange and output. `send_bw --help` lists the flags; with
//! no server and no device it runs both sides over loopback.

fn main() -> std::process::ExitCode {
    examples::perftest::main(examples::perftest::Tool::SendBw)
}
