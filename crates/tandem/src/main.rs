//! `tandem`: neighbouring routers pool their uplinks for plain-HTTP downloads.
//!
//! Subcommands: `run` (the daemon), `keygen`, `status`, `rules`, `lab`, and
//! the hidden helpers the lab and the tests start inside namespaces
//! (`origin`, `delayline`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use tandem::config::{self, Config};
use tandem::{rules, status};

#[derive(Parser, Debug)]
#[command(name = "tandem", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr; stops on SIGTERM/SIGINT).
    Run {
        /// The TOML configuration (docs/configuration.md).
        #[arg(long, short)]
        config: PathBuf,
        /// Only parse and validate the configuration, then exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Print the firewall rules for a configuration.
    Rules {
        /// `iptables` (a sh script with start/stop) or `nft` (a ruleset).
        flavor: rules::Flavor,
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve files over HTTP/1.1 with Range support (the lab's and tests' origin).
    #[command(hide = true)]
    Origin {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Directory whose files are served.
        #[arg(long)]
        dir: PathBuf,
        /// Ignore Range requests (always 200, no Accept-Ranges).
        #[arg(long)]
        no_ranges: bool,
        /// Per-connection rate limit, bytes per second.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Show peers, downloads in progress and decision counters of the running daemon.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The daemon's status socket.
        #[arg(long, default_value_os_t = config::default_socket())]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            check_config,
        } => {
            let cfg = Config::load(&config)?;
            if check_config {
                println!(
                    "{}: ok ({} peer{})",
                    config.display(),
                    cfg.peers.len(),
                    if cfg.peers.len() == 1 { "" } else { "s" }
                );
                return Ok(ExitCode::SUCCESS);
            }
            anyhow::bail!("the daemon runtime is not built yet")
        }
        Command::Rules { flavor, config } => {
            let cfg = Config::load(&config)?;
            print!("{}", rules::render(&cfg, flavor));
            Ok(ExitCode::SUCCESS)
        }
        Command::Origin {
            listen,
            dir,
            no_ranges,
            rate,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let files = tandem_fetch::OriginFiles::dir(dir)
                    .with_ranges(!no_ranges)
                    .with_rate_limit(rate);
                tandem_fetch::serve_origin(listener, files).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, socket } => {
            let snapshot = status::query(&socket)
                .with_context(|| format!("no daemon answers on {}", socket.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                print!("{}", status::render_table(&snapshot));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
