//! tandem-bench: the benchmark suite (issue 6). See docs/benchmarks.md.
//!
//! Calling contract: run as root (it builds network namespaces with
//! `tandem-lab`), with the `tandem` binary given by `--tandem` and curl,
//! socat, nginx and mptcpize installed (`scripts/bench.sh` does all that).
//! Every scenario builds its own topology, measures every compared system
//! in the same run (interleaved per repetition, order rotated), quotes
//! medians, prints a table and writes `results.json`, `results.csv`,
//! `summary.csv`, `table.txt` and SVG plots into `--out`. Nothing is sent
//! outside the namespaces it created; everything is removed at the end
//! (also on Ctrl-C).

mod cost;
mod measure;
mod procfs;
mod report;
mod scenario;
mod systems;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use tandem_lab::origin::{OriginKind, start_origin};
use tandem_lab::plot::{self, Panel, Series};
use tandem_lab::topology::router_letter;
use tandem_lab::{LabOrigin, Rate, Topology, TopologySpec, Way, netns, transfer};

use crate::report::Row;
use crate::scenario::{Group, Scenario, System};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(
    name = "tandem-bench",
    about = "tandem benchmark suite: efficiency vs ideal and vs MPTCP bonding, costs"
)]
struct Args {
    /// 1 repetition and smaller sizes: a few minutes.
    #[arg(long)]
    quick: bool,
    /// Repetitions per measurement (default: 1 with --quick, else 3).
    #[arg(long)]
    reps: Option<usize>,
    /// The tandem binary (daemon, origin, delay line).
    #[arg(long, default_value = "target/release/tandem")]
    tandem: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Only these groups (comma-separated): two, four, hetero, change, mesh, cost.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Group>,
    /// Skip the MPTCP anchor.
    #[arg(long)]
    no_mptcp: bool,
    /// Profile both daemons with `perf record -g` during the first unshaped
    /// accelerated download (perf-a/b.data and .txt in --out; use a tandem
    /// binary with symbols).
    #[arg(long)]
    perf: bool,
    /// Origin server.
    #[arg(long, value_enum, default_value_t = LabOrigin::Nginx)]
    origin: LabOrigin,
    /// Which cost rows: `all`, or `unshaped` for only the unshaped
    /// accelerated row (plain forwarding and tandem alternating `--reps`
    /// times; with `--perf` the first tandem download is profiled).
    #[arg(long, value_enum, default_value_t = cost::CostRows::All)]
    cost: cost::CostRows,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything written to results.json.
#[derive(Serialize)]
struct Results<'a> {
    quick: bool,
    reps: usize,
    started_utc: String,
    machine: String,
    scenarios: Vec<&'a Scenario>,
    rows: &'a [Row],
    summary: Vec<report::Summary>,
    cost: Option<&'a cost::CostResults>,
    errors: &'a [String],
}

fn run(args: &Args) -> Result<()> {
    netns::require_root()?;
    let exe = std::fs::canonicalize(&args.tandem)
        .with_context(|| format!("tandem binary {}", args.tandem.display()))?;
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let mut tools = vec!["curl", "socat", "ss", "iptables", "tc", "nstat"];
    if !args.no_mptcp {
        tools.push("mptcpize");
    }
    if args.origin == LabOrigin::Nginx {
        tools.push("nginx");
    }
    for t in tools {
        netns::host(&["sh", "-c", &format!("command -v {t}")])
            .with_context(|| format!("{t} is not installed (scripts/bench.sh installs it)"))?;
    }
    let started = netns::host(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])?
        .trim()
        .to_owned();
    let machine = netns::host(&[
        "sh",
        "-c",
        "echo \"$(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)\"",
    ])?
    .trim()
    .to_owned();
    println!(
        "tandem-bench — {} mode, {reps} repetition(s), {machine}",
        if args.quick { "quick" } else { "full" }
    );
    let wanted = |g: Group| args.only.is_empty() || args.only.contains(&g);
    let all = scenario::scenarios(args.quick, !args.no_mptcp);
    let chosen: Vec<&Scenario> = all.iter().filter(|s| wanted(s.group)).collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut cost_res: Option<cost::CostResults> = None;
    let titles: Vec<(String, String)> = all
        .iter()
        .map(|s| (s.id.clone(), s.title.clone()))
        .collect();
    let write_all =
        |rows: &[Row], cost: Option<&cost::CostResults>, errors: &[String]| -> Result<()> {
            let summary = report::summarise(rows);
            let res = Results {
                quick: args.quick,
                reps,
                started_utc: started.clone(),
                machine: machine.clone(),
                scenarios: chosen.clone(),
                rows,
                summary: summary.clone(),
                cost,
                errors,
            };
            std::fs::write(
                out.join("results.json"),
                serde_json::to_string_pretty(&res)?,
            )?;
            std::fs::write(out.join("results.csv"), report::rows_csv(rows))?;
            std::fs::write(out.join("summary.csv"), summary_csv(&summary))?;
            let mut text = report::table(&summary, &titles);
            if let Some(c) = cost {
                text.push_str(&c.table());
            }
            std::fs::write(out.join("table.txt"), &text)?;
            write_bars(&out, &summary, &chosen)?;
            Ok(())
        };
    for sc in &chosen {
        println!("\n== {} ==", sc.title);
        match run_scenario(sc, &exe, args, reps, &out) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                let msg = format!("scenario {}: {e:#}", sc.id);
                println!("  ! {msg}");
                errors.push(msg);
            }
        }
        write_all(&rows, cost_res.as_ref(), &errors)?;
    }
    if wanted(Group::Cost) {
        println!("\n== cost ==");
        match cost::run_cost(
            &exe,
            origin_kind(args, &exe),
            args.quick,
            reps,
            &out,
            args.perf,
            args.cost,
        ) {
            Ok(c) => cost_res = Some(c),
            Err(e) => {
                let msg = format!("cost: {e:#}");
                println!("  ! {msg}");
                errors.push(msg);
            }
        }
    }
    write_all(&rows, cost_res.as_ref(), &errors)?;
    println!("\n== results (medians over {reps} repetition(s)) ==");
    print!("{}", report::table(&report::summarise(&rows), &titles));
    if let Some(c) = &cost_res {
        print!("{}", c.table());
    }
    println!(
        "\nwritten: {}/{{results.json,results.csv,summary.csv,table.txt,*.svg}}",
        out.display()
    );
    if !errors.is_empty() {
        anyhow::bail!("{} part(s) failed: {}", errors.len(), errors.join("; "));
    }
    Ok(())
}

fn origin_kind(args: &Args, exe: &Path) -> OriginKind {
    match args.origin {
        LabOrigin::Nginx => OriginKind::Nginx,
        LabOrigin::Tandem => OriginKind::Tandem {
            exe: exe.to_path_buf(),
            extra: Vec::new(),
        },
    }
}

fn summary_csv(s: &[report::Summary]) -> String {
    let mut t = String::from("scenario,system,size_mib,ok,failed,median_s,ideal_s,efficiency\n");
    for x in s {
        t.push_str(&format!(
            "{},{},{},{},{},{:.4},{:.4},{:.4}\n",
            x.scenario,
            x.system.key(),
            x.size_mib,
            x.ok,
            x.failed,
            x.median_s,
            x.ideal_s,
            x.efficiency
        ));
    }
    t
}

/// One grouped-bar SVG of every efficiency scenario.
fn write_bars(out: &Path, summary: &[report::Summary], chosen: &[&Scenario]) -> Result<()> {
    let systems = [
        System::Plain,
        System::Mptcp,
        System::TandemProportional,
        System::TandemDynamic,
    ];
    let mut cats = Vec::new();
    let mut vals = Vec::new();
    for sc in chosen {
        for &size in &sc.sizes_mib {
            cats.push(format!("{} {size}M", sc.id));
            vals.push(
                systems
                    .iter()
                    .map(|&sys| {
                        summary
                            .iter()
                            .find(|x| x.scenario == sc.id && x.size_mib == size && x.system == sys)
                            .map(|x| x.efficiency)
                    })
                    .collect(),
            );
        }
    }
    if cats.is_empty() {
        return Ok(());
    }
    let svg = report::bars_svg(
        "tandem-bench: aggregation efficiency (median)",
        &cats,
        &systems
            .iter()
            .map(|s| s.label().to_owned())
            .collect::<Vec<_>>(),
        &vals,
        &[
            (0.97, "target 0.97 (2r, 32 MiB)".into()),
            (0.92, "target 0.92 (2r, 8 MiB)".into()),
        ],
    );
    std::fs::write(out.join("efficiency.svg"), svg)?;
    Ok(())
}

fn topology_for(sc: &Scenario, exe: &Path) -> Result<Topology> {
    let n = sc.routers;
    let spec = TopologySpec {
        routers: n,
        mesh: sc.mesh.clone(),
        clients: vec![0],
        down: Some(Rate::mbit(sc.down_mbit[0])),
        up: Some(Rate::mbit(20)),
        down_per_router: (0..n).map(|i| (i, Rate::mbit(sc.down_mbit[i]))).collect(),
        mesh_rate: Some(Rate::mbit(sc.mesh_mbit)),
        delay_ms: sc.delay_ms,
        delay_command: vec![exe.as_os_str().to_owned(), OsString::from("delayline")],
        origin_own_ns: true,
        no_offloads: true,
    };
    Topology::build(spec)
}

fn run_scenario(
    sc: &Scenario,
    exe: &Path,
    args: &Args,
    reps: usize,
    out: &Path,
) -> Result<Vec<Row>> {
    let topo = topology_for(sc, exe)?;
    let _logs = systems::KeepLogs::new(&topo, &out.join("logs").join(&sc.id));
    let www = topo.workdir().join("www");
    std::fs::create_dir_all(&www)?;
    for &m in &sc.sizes_mib {
        transfer::write_random_file(&www.join(format!("f{m}.bin")), m << 20, 0x7a4d + m)?;
    }
    let mut origin = start_origin(&topo, &origin_kind(args, exe), &www)?;
    let dl_dir = topo.workdir().join("client");
    let mut rows = Vec::new();
    let mut panels: Vec<Panel> = Vec::new();
    let largest = sc.sizes_mib.iter().copied().max().unwrap_or(0);
    for rep in 0..reps {
        let k = sc.systems.len();
        let order: Vec<System> = (0..k).map(|i| sc.systems[(i + rep) % k]).collect();
        for sys in order {
            // Something outside the bench may kill the origin (it happened
            // once during a full run on the shared machine): say so and
            // start it again rather than measuring refused connections.
            if let Some(st) = origin.proc().try_wait()? {
                println!("  ! the origin exited ({st}); starting it again");
                origin = start_origin(&topo, &origin_kind(args, exe), &www)?;
            }
            let act = match systems::start(&topo, exe, sys, &sc.down_mbit, 1 << 20) {
                Ok(a) => a,
                Err(e) => {
                    let msg = format!("{}: setup failed: {e:#}", sys.label());
                    println!("  ! {msg}");
                    for &m in &sc.sizes_mib {
                        rows.push(failed_row(sc, sys, m, rep, &msg));
                    }
                    continue;
                }
            };
            for &m in &sc.sizes_mib {
                let size = m << 20;
                let ideal = sc.ideal_s(size);
                let change = sc
                    .change
                    .zip(sc.change_at_s(size))
                    .map(|(c, at)| measure::Change {
                        at_s: at,
                        router: c.router,
                        rate: Rate::mbit(c.to_mbit),
                    });
                // Plain through A alone takes size / A's rate; allow 4x that.
                let timeout = Duration::from_secs_f64(
                    size as f64 * 8.0 / (sc.down_mbit[0] as f64 * 1e6) * 4.0 + 60.0,
                );
                let res = measure::download(
                    &topo,
                    &origin.url(&format!("f{m}.bin")),
                    &www.join(format!("f{m}.bin")),
                    &dl_dir,
                    measure::Opts {
                        change,
                        ..measure::Opts::one(timeout)
                    },
                );
                if let Some(c) = sc.change {
                    topo.shape_uplink(c.router, Way::Down, Rate::mbit(sc.down_mbit[c.router]))?;
                }
                let mut row = match res.map(|mut v| v.pop()) {
                    Ok(Some(mm)) => {
                        let total: u64 = mm.per_source.iter().sum::<u64>().max(1);
                        let r = Row {
                            scenario: sc.id.clone(),
                            system: sys,
                            size_mib: m,
                            rep,
                            secs: mm.curl.map(|c| c.total_s).unwrap_or(f64::NAN),
                            ttfb_s: mm.curl.map(|c| c.ttfb_s).unwrap_or(f64::NAN),
                            ideal_s: ideal,
                            wan_share: mm
                                .per_source
                                .iter()
                                .map(|b| *b as f64 / total as f64)
                                .collect(),
                            error: mm.error.clone(),
                        };
                        if rep == 0 && m == largest {
                            panels.push(panel(&r, &mm.samples));
                        }
                        r
                    }
                    Ok(None) => failed_row(sc, sys, m, rep, "no result"),
                    Err(e) => failed_row(sc, sys, m, rep, &format!("{e:#}")),
                };
                if row.error.is_none()
                    && let Err(e) = act.check_alive()
                {
                    row.error = Some(format!("a process died: {e:#}"));
                }
                println!(
                    "  rep {} {:<20} {:>4} MiB  {:>7.2} s  ideal {:>6.2} s  eff {:>5.3}  WAN {}{}",
                    rep + 1,
                    sys.label(),
                    m,
                    row.secs,
                    ideal,
                    ideal / row.secs,
                    row.wan_share
                        .iter()
                        .enumerate()
                        .map(|(i, s)| format!(
                            "{}{:.0}%",
                            router_letter(i).to_ascii_uppercase(),
                            s * 100.0
                        ))
                        .collect::<Vec<_>>()
                        .join(" "),
                    row.error
                        .as_deref()
                        .map(|e| format!("  ! {e}"))
                        .unwrap_or_default()
                );
                rows.push(row);
                std::thread::sleep(Duration::from_millis(500));
            }
            if sys.policy().is_some() {
                match act.status_json(exe, 0) {
                    Ok(j) => {
                        let _ = std::fs::write(
                            out.join(format!(
                                "status-{}-{}-rep{}.json",
                                sc.id,
                                sys.key(),
                                rep + 1
                            )),
                            &j,
                        );
                        if accelerated(&j) == Some(0) {
                            println!("  ! {}: A's daemon accelerated no download", sys.label());
                        }
                    }
                    Err(e) => println!("  ! status of A: {e:#}"),
                }
            }
            if sys == System::Mptcp {
                let c = systems::mptcp_counters(&topo, &topo.origin_ns());
                let joins = c
                    .iter()
                    .find(|(k, _)| k == "MPTcpExtMPJoinAckRx")
                    .map(|(_, v)| *v)
                    .unwrap_or(0);
                println!(
                    "  MPTCP: aggregator accepted {joins} join(s) so far (MPTcpExtMPJoinAckRx)"
                );
            }
            act.stop(&topo);
        }
    }
    if !panels.is_empty() {
        let title = format!(
            "{}: {largest} MiB, throughput entering each router's WAN (rep 1)",
            sc.title
        );
        let y_ref = sc.down_mbit.iter().copied().max().unwrap_or(20) as f64;
        std::fs::write(
            out.join(format!("throughput-{}.svg", sc.id)),
            plot::svg(&title, &panels, y_ref),
        )?;
        std::fs::write(
            out.join(format!("throughput-{}.csv", sc.id)),
            plot::csv(&panels),
        )?;
    }
    Ok(rows)
}

fn accelerated(status_json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(status_json).ok()?;
    Some(
        v.get("decisions")?
            .get("accelerated")
            .and_then(|x| x.as_u64())
            .unwrap_or(0),
    )
}

fn panel(r: &Row, samples: &[(f64, Vec<f64>)]) -> Panel {
    let n = samples.first().map(|s| s.1.len()).unwrap_or(0);
    Panel {
        title: format!(
            "{} — {:.2} s (ideal {:.2} s)",
            r.system.label(),
            r.secs,
            r.ideal_s
        ),
        series: (0..n)
            .map(|i| Series {
                name: format!("{} uplink", router_letter(i).to_ascii_uppercase()),
                points: samples
                    .iter()
                    .map(|(t, v)| (*t, v.get(i).copied().unwrap_or(0.0)))
                    .collect(),
            })
            .collect(),
    }
}

fn failed_row(sc: &Scenario, sys: System, m: u64, rep: usize, why: &str) -> Row {
    Row {
        scenario: sc.id.clone(),
        system: sys,
        size_mib: m,
        rep,
        secs: f64::NAN,
        ttfb_s: f64::NAN,
        ideal_s: sc.ideal_s(m << 20),
        wan_share: Vec::new(),
        error: Some(why.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerated_count_is_read_from_status() {
        assert_eq!(
            accelerated(r#"{"decisions":{"accelerated":2,"too_small":1}}"#),
            Some(2)
        );
        assert_eq!(accelerated(r#"{"decisions":{"too_small":1}}"#), Some(0));
        assert_eq!(accelerated("not json"), None);
    }

    #[test]
    fn summary_csv_has_one_line_per_summary() {
        let rows = vec![Row {
            scenario: "two".into(),
            system: System::TandemDynamic,
            size_mib: 8,
            rep: 0,
            secs: 2.0,
            ttfb_s: 0.04,
            ideal_s: 1.75,
            wan_share: vec![0.5, 0.5],
            error: None,
        }];
        let csv = summary_csv(&report::summarise(&rows));
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].starts_with("two,tandem-dynamic,8,1,0,2.0000,1.7500,0.8750"),
            "{csv}"
        );
    }

    #[test]
    fn failed_rows_carry_the_ideal_and_the_reason() {
        let sc = &scenario::scenarios(true, true)[0];
        let r = failed_row(sc, System::Mptcp, 8, 2, "setup failed");
        assert!(r.secs.is_nan() && r.error.as_deref() == Some("setup failed"));
        assert!((r.ideal_s - sc.ideal_s(8 << 20)).abs() < 1e-12);
    }

    #[test]
    fn cli_parses_groups() {
        let a = Args::try_parse_from(["tandem-bench", "--quick", "--only", "two,cost"]).unwrap();
        assert!(a.quick);
        assert_eq!(a.only, vec![Group::Two, Group::Cost]);
    }
}
