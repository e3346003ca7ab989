//! `tandem-lab-helper`: runs the lab's entry points without the `tandem`
//! binary, for the netns tests: `delayline` (what `tandem delayline` runs),
//! `lab` (what `tandem lab` runs, with `--tandem` naming the daemon binary),
//! and `hold` (builds a topology and waits to be signalled, for the teardown
//! tests).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tandem lab helper (test stand-in for hidden tandem subcommands)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The NFQUEUE delay line (`tandem delayline`).
    Delayline(tandem_lab::DelayArgs),
    /// The lab demonstration (`tandem lab`).
    Lab {
        /// The tandem binary that runs origin and daemons.
        #[arg(long)]
        tandem: PathBuf,
        #[command(flatten)]
        args: tandem_lab::LabArgs,
    },
    /// Build a client–A–B topology (no delay), start a process in it, print
    /// the namespace names and `ready`, then wait for a signal (or, with
    /// `--keep`, keep it and exit at once, printing `remove: <command>`).
    Hold {
        /// Keep the topology and exit.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Delayline(a) => tandem_lab::run_delayline(a),
        Cmd::Lab { tandem, args } => tandem_lab::run_lab(args, &tandem),
        Cmd::Hold { keep } => {
            let mut spec = tandem_lab::TopologySpec::pair(Vec::new());
            spec.delay_ms = 0;
            let mut topo = tandem_lab::Topology::build(spec)?;
            let p = topo.spawn(&topo.client_ns(0), "sleeper", &["sleep", "1000"])?;
            println!("ns: {}", topo.namespaces().join(" "));
            println!("pid: {}", p.pid());
            if keep {
                topo.keep();
                println!("remove: {}", topo.removal_command());
                return Ok(());
            }
            println!("ready");
            std::io::stdout().flush()?;
            loop {
                std::thread::park();
            }
        }
    }
}
