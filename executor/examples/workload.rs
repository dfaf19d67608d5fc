//! `workload`: a stand-in batch task (an encoding chunk, a training step) for
//! the `ebb-workload:dev` image that the executor's tests, benchmarks and the
//! demo run.
//!
//! It burns CPU (or sleeps) for a given time, allocates and touches memory,
//! prints progress lines, exits with a chosen code, and on SIGTERM writes a
//! checkpoint line and exits cleanly (or ignores SIGTERM, to test the SIGKILL
//! after the grace period). It uses only std and `signal-hook` so that it links
//! as a static binary and runs in a `FROM scratch` image:
//!
//! ```text
//! RUSTFLAGS='-C target-feature=+crt-static' \
//!     cargo build --release --example workload --target x86_64-unknown-linux-gnu
//! ```
//!
//! `scripts/build-workload-image.sh` does that and builds the image. Run
//! `workload --help` for the flags.

use std::hint::black_box;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "\
workload: a stand-in batch task for Ebb's executor tests and demo.

USAGE: workload [FLAGS]

  --work-ms MS          how long the task works before it finishes (default 1000)
  --mode burn|sleep     burn: spin on the CPU while working (an encoding chunk);
                        sleep: wait without using CPU (default burn)
  --threads N           spinning threads in burn mode (default 1)
  --memory-mib MIB      allocate and touch this much memory before working,
                        1 MiB at a time, reporting each 16 MiB (default 0)
  --progress-ms MS      interval between progress lines (default 1000)
  --print-lines N       print N numbered filler lines first, to make output
                        for log-tail tests (default 0)
  --exit-code CODE      exit code when the work is done (default 0)
  --on-sigterm checkpoint|ignore
                        checkpoint: print a checkpoint line, wait --checkpoint-ms,
                        print `exiting after SIGTERM` and exit with code 0;
                        ignore: print `ignoring SIGTERM` and keep working
                        (default checkpoint)
  --checkpoint-ms MS    time the checkpoint takes to write (default 0)
  --help                print this text

Every line goes to stdout, starting with `workload:`.";

/// Work mode: what a working thread does with its time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Burn,
    Sleep,
}

/// What SIGTERM does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnSigterm {
    Checkpoint,
    Ignore,
}

struct Flags {
    work_ms: u64,
    mode: Mode,
    n_threads: u32,
    memory_mib: u64,
    progress_ms: u64,
    n_print_lines: u64,
    exit_code: u8,
    on_sigterm: OnSigterm,
    checkpoint_ms: u64,
}

fn parse_flags(args: &[String]) -> Result<Option<Flags>, String> {
    let mut flags = Flags {
        work_ms: 1000,
        mode: Mode::Burn,
        n_threads: 1,
        memory_mib: 0,
        progress_ms: 1000,
        n_print_lines: 0,
        exit_code: 0,
        on_sigterm: OnSigterm::Checkpoint,
        checkpoint_ms: 0,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("flag `{flag}` needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value.parse::<u64>().map_err(|_| {
                format!("invalid `{what}`: expected a non-negative integer, got {value:?}")
            })
        };
        match flag.as_str() {
            "--work-ms" => flags.work_ms = number("--work-ms")?,
            "--mode" => {
                flags.mode = match value.as_str() {
                    "burn" => Mode::Burn,
                    "sleep" => Mode::Sleep,
                    _ => {
                        return Err(format!(
                            "invalid `--mode`: expected burn or sleep, got {value:?}"
                        ));
                    }
                }
            }
            "--threads" => {
                flags.n_threads = u32::try_from(number("--threads")?)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!("invalid `--threads`: expected 1 or more, got {value:?}")
                    })?
            }
            "--memory-mib" => flags.memory_mib = number("--memory-mib")?,
            "--progress-ms" => {
                flags.progress_ms = number("--progress-ms")?;
                if flags.progress_ms == 0 {
                    return Err("invalid `--progress-ms`: must be greater than zero".into());
                }
            }
            "--print-lines" => flags.n_print_lines = number("--print-lines")?,
            "--exit-code" => {
                flags.exit_code = value.parse::<u8>().map_err(|_| {
                    format!("invalid `--exit-code`: expected 0..=255, got {value:?}")
                })?
            }
            "--on-sigterm" => {
                flags.on_sigterm = match value.as_str() {
                    "checkpoint" => OnSigterm::Checkpoint,
                    "ignore" => OnSigterm::Ignore,
                    _ => {
                        return Err(format!(
                            "invalid `--on-sigterm`: expected checkpoint or ignore, got {value:?}"
                        ));
                    }
                }
            }
            "--checkpoint-ms" => flags.checkpoint_ms = number("--checkpoint-ms")?,
            _ => return Err(format!("unknown flag `{flag}` (see --help)")),
        }
    }
    Ok(Some(flags))
}

/// Prints one line and flushes it, so `docker logs` sees it even if the
/// process is SIGKILLed right after.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not kill the workload: its output is best-effort.
    let _ = writeln!(out, "workload: {line}");
    let _ = out.flush();
}

/// Allocates `memory_mib` MiB one MiB at a time and writes one byte per page
/// so the kernel really backs it (an untouched allocation costs nothing and
/// would never hit the memory limit).
fn allocate(memory_mib: u64) -> Vec<Vec<u8>> {
    /// Bytes in one MiB.
    const MIB: usize = 1024 * 1024;
    /// The smallest x86-64 page: touching one byte per 4 KiB backs every page.
    const PAGE_BYTES: usize = 4096;
    /// Report allocation progress this often, so an OOM kill shows how far it got.
    const REPORT_EVERY_MIB: u64 = 16;
    let mut chunks = Vec::new();
    for mib in 1..=memory_mib {
        let mut chunk = vec![0u8; MIB];
        for page in chunk.iter_mut().step_by(PAGE_BYTES) {
            *page = 1;
        }
        chunks.push(black_box(chunk));
        if mib % REPORT_EVERY_MIB == 0 || mib == memory_mib {
            say(format_args!("allocated {mib} MiB"));
        }
    }
    chunks
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match parse_flags(&args) {
        Ok(Some(flags)) => flags,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("workload: {message}");
            // 64 is EX_USAGE from sysexits.h: a command-line usage error.
            return ExitCode::from(64);
        }
    };

    let sigterm = Arc::new(AtomicBool::new(false));
    if let Err(err) =
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&sigterm))
    {
        eprintln!("workload: cannot install the SIGTERM handler: {err}");
        return ExitCode::from(70); // EX_SOFTWARE: an internal error.
    }

    say(format_args!(
        "started work_ms={} mode={} threads={} memory_mib={} pid={}",
        flags.work_ms,
        if flags.mode == Mode::Burn {
            "burn"
        } else {
            "sleep"
        },
        flags.n_threads,
        flags.memory_mib,
        std::process::id()
    ));
    for line in 1..=flags.n_print_lines {
        say(format_args!("line {line}"));
    }
    let memory = allocate(flags.memory_mib);

    let start = Instant::now();
    let work = Duration::from_millis(flags.work_ms);
    let done = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = if flags.mode == Mode::Burn {
        (0..flags.n_threads)
            .map(|_| {
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                    }
                    x
                })
            })
            .collect()
    } else {
        Vec::new()
    };

    // The main thread watches time and the signal flag; it wakes often enough
    // that a SIGTERM is acted on within a few milliseconds.
    /// How often the main thread checks the clock and the signal flag.
    const TICK: Duration = Duration::from_millis(5);
    let progress_every = Duration::from_millis(flags.progress_ms);
    let mut next_progress = progress_every;
    let mut ignoring = false;
    let exit = loop {
        let elapsed = start.elapsed();
        if elapsed >= work {
            say(format_args!(
                "done after {} ms, exiting with code {}",
                elapsed.as_millis(),
                flags.exit_code
            ));
            break ExitCode::from(flags.exit_code);
        }
        if sigterm.load(Ordering::Relaxed) {
            match flags.on_sigterm {
                OnSigterm::Checkpoint => {
                    let percent = elapsed.as_millis() * 100 / work.as_millis().max(1);
                    say(format_args!(
                        "SIGTERM received, checkpoint at {percent}% after {} ms",
                        elapsed.as_millis()
                    ));
                    std::thread::sleep(Duration::from_millis(flags.checkpoint_ms));
                    say(format_args!("exiting after SIGTERM"));
                    break ExitCode::SUCCESS;
                }
                OnSigterm::Ignore if !ignoring => {
                    ignoring = true;
                    say(format_args!("ignoring SIGTERM"));
                }
                OnSigterm::Ignore => {}
            }
        }
        if elapsed >= next_progress {
            let percent = elapsed.as_millis() * 100 / work.as_millis().max(1);
            say(format_args!(
                "progress {percent}% elapsed_ms={}",
                elapsed.as_millis()
            ));
            next_progress += progress_every;
        }
        std::thread::sleep(TICK.min(work - elapsed));
    };

    done.store(true, Ordering::Relaxed);
    for spinner in spinners {
        black_box(spinner.join().ok());
    }
    drop(black_box(memory));
    exit
}
