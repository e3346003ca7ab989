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
    /// Create a key pair for the peer protocol: prints the public key; the
    /// private key goes to `--out` (mode 0600) or, without it, to stdout.
    Keygen {
        /// File for the private key (refuses to overwrite).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key of an existing private key file.
    Pubkey {
        /// The private key file (`node.private_key_file`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the firewall rules for a configuration.
    Rules {
        /// `iptables` (a sh script with start/stop) or `nft` (a ruleset).
        flavor: rules::Flavor,
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The namespace lab: a download through router A alone, then with
    /// neighbours helping; prints a table and writes an SVG plot (root).
    Lab(tandem_lab::LabArgs),
    /// Hold every queued packet for a fixed time (the lab's delay line).
    #[command(hide = true)]
    Delayline(tandem_lab::DelayArgs),
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colours only on a terminal: logd and files get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
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
            init_logging();
            tandem::runtime::run(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(args) => {
            let exe = std::env::current_exe().context("cannot find the tandem executable")?;
            tandem_lab::run_lab(args, &exe)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delayline(args) => {
            init_logging();
            tandem_lab::run_delayline(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let pair = tandem_peer::KeyPair::generate()
                .map_err(|e| anyhow::anyhow!("key generation failed: {e}"))?;
            match out {
                Some(path) => {
                    use std::io::Write as _;
                    use std::os::unix::fs::OpenOptionsExt as _;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("cannot create {} (exists?)", path.display()))?;
                    writeln!(f, "{}", pair.to_base64())?;
                    println!("{}", pair.public().to_base64());
                }
                None => {
                    println!("private_key = {}", pair.to_base64());
                    println!("public_key = {}", pair.public().to_base64());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pubkey { key } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let pair = tandem_peer::KeyPair::from_base64(text.trim())
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            println!("{}", pair.public().to_base64());
            Ok(ExitCode::SUCCESS)
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
