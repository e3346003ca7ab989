//! Results: one row per measured download, medians per (scenario, system,
//! size), the printed table, CSV/JSON, and a grouped-bar SVG of efficiency.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::System;

/// One measured download in an efficiency scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Scenario id.
    pub scenario: String,
    /// System measured.
    pub system: System,
    /// File size, MiB.
    pub size_mib: u64,
    /// Repetition (0-based).
    pub rep: usize,
    /// curl's total time, s (NaN if failed).
    pub secs: f64,
    /// curl's time to first byte, s.
    pub ttfb_s: f64,
    /// Ideal time of the scenario for this size, s.
    pub ideal_s: f64,
    /// Share of the bytes that entered each router's WAN.
    pub wan_share: Vec<f64>,
    /// Set when the download failed or was not byte-identical.
    pub error: Option<String>,
}

/// Median of the values (NaN for none); the mean of the middle two for an
/// even count.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Medians over the repetitions of one (scenario, system, size).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scenario id.
    pub scenario: String,
    /// System.
    pub system: System,
    /// Size, MiB.
    pub size_mib: u64,
    /// Successful, byte-identical repetitions.
    pub ok: usize,
    /// Failed ones.
    pub failed: usize,
    /// Median time, s.
    pub median_s: f64,
    /// Ideal time, s.
    pub ideal_s: f64,
    /// ideal / median time.
    pub efficiency: f64,
    /// Median share of each router's WAN.
    pub wan_share: Vec<f64>,
}

/// Summaries of `rows`, in first-seen order of (scenario, size, system).
pub fn summarise(rows: &[Row]) -> Vec<Summary> {
    let mut keys: Vec<(String, u64, System)> = Vec::new();
    for r in rows {
        let k = (r.scenario.clone(), r.size_mib, r.system);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    // Scenarios in first-seen order, sizes ascending within each; the sort is
    // stable, so systems keep their first-seen order.
    let scen_order: Vec<String> = keys.iter().fold(Vec::new(), |mut v, k| {
        if !v.contains(&k.0) {
            v.push(k.0.clone());
        }
        v
    });
    keys.sort_by_key(|k| (scen_order.iter().position(|s| *s == k.0), k.1));
    keys.into_iter()
        .map(|(scenario, size_mib, system)| {
            let rs: Vec<&Row> = rows
                .iter()
                .filter(|r| r.scenario == scenario && r.size_mib == size_mib && r.system == system)
                .collect();
            let good: Vec<&&Row> = rs.iter().filter(|r| r.error.is_none()).collect();
            let secs: Vec<f64> = good.iter().map(|r| r.secs).collect();
            let median_s = median(&secs);
            let ideal_s = rs.first().map(|r| r.ideal_s).unwrap_or(f64::NAN);
            let n_src = rs.first().map(|r| r.wan_share.len()).unwrap_or(0);
            let wan_share = (0..n_src)
                .map(|i| {
                    median(
                        &good
                            .iter()
                            .map(|r| r.wan_share.get(i).copied().unwrap_or(f64::NAN))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            Summary {
                scenario,
                system,
                size_mib,
                ok: good.len(),
                failed: rs.len() - good.len(),
                median_s,
                ideal_s,
                efficiency: ideal_s / median_s,
                wan_share,
            }
        })
        .collect()
}

/// The printed table: one line per (scenario, size, system).
pub fn table(summaries: &[Summary], titles: &[(String, String)]) -> String {
    let mut s = String::new();
    let mut last = String::new();
    for x in summaries {
        if x.scenario != last {
            let title = titles
                .iter()
                .find(|(id, _)| *id == x.scenario)
                .map(|(_, t)| t.as_str())
                .unwrap_or(&x.scenario);
            let _ = writeln!(s, "\n{title}");
            let _ = writeln!(
                s,
                "  {:>6}  {:<20} {:>8} {:>8} {:>11} {:>6}  WAN share A/B/…",
                "size", "system", "median", "ideal", "efficiency", "ok"
            );
            last = x.scenario.clone();
        }
        let shares: Vec<String> = x
            .wan_share
            .iter()
            .map(|v| format!("{:.0}%", v * 100.0))
            .collect();
        let _ = writeln!(
            s,
            "  {:>3} MiB  {:<20} {:>6.2} s {:>6.2} s {:>11} {:>3}/{:<2}  {}",
            x.size_mib,
            x.system.label(),
            x.median_s,
            x.ideal_s,
            if x.efficiency.is_finite() {
                format!("{:.3}", x.efficiency)
            } else {
                "—".into()
            },
            x.ok,
            x.ok + x.failed,
            shares.join(" / ")
        );
    }
    s
}

/// CSV of the rows.
pub fn rows_csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "scenario,system,size_mib,rep,secs,ttfb_s,ideal_s,efficiency,wan_share,error\n",
    );
    for r in rows {
        let shares: Vec<String> = r.wan_share.iter().map(|v| format!("{v:.4}")).collect();
        let _ = writeln!(
            s,
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{}",
            r.scenario,
            r.system.key(),
            r.size_mib,
            r.rep,
            r.secs,
            r.ttfb_s,
            r.ideal_s,
            r.ideal_s / r.secs,
            shares.join(";"),
            r.error.as_deref().unwrap_or("").replace([',', '\n'], " ")
        );
    }
    s
}

/// Grouped bars: one group per category (e.g. "two 32 MiB"), one bar per
/// system, values in 0..=1.1 (efficiency); `targets` draws dashed lines.
pub fn bars_svg(
    title: &str,
    categories: &[String],
    systems: &[String],
    values: &[Vec<Option<f64>>],
    targets: &[(f64, String)],
) -> String {
    const COLORS: [&str; 6] = [
        "#7f7f7f", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#d62728",
    ];
    let (left, top, ph, bottom) = (60.0, 50.0, 260.0, 90.0);
    let group_w = 24.0 * systems.len().max(1) as f64 + 30.0;
    let w = left + group_w * categories.len().max(1) as f64 + 180.0;
    let h = top + ph + bottom;
    let y_max = 1.1;
    let y = |v: f64| top + ph * (1.0 - (v / y_max).clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for k in 0..=11 {
        let v = k as f64 * 0.1;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
            w - 180.0,
            left - 6.0,
            yy + 4.0
        );
    }
    for (v, label) in targets {
        let yy = y(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#d62728" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}" fill="#d62728">{}</text>"##,
            w - 180.0,
            w - 175.0,
            yy + 4.0,
            esc(label)
        );
    }
    for (c, cat) in categories.iter().enumerate() {
        let x0 = left + 15.0 + c as f64 * group_w;
        for (k, _) in systems.iter().enumerate() {
            let v = values.get(c).and_then(|r| r.get(k)).copied().flatten();
            let x = x0 + k as f64 * 24.0;
            match v {
                Some(v) if v.is_finite() => {
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x:.1}" y="{:.1}" width="20" height="{:.1}" fill="{}"><title>{v:.3}</title></rect><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{:.2}</text>"#,
                        y(v),
                        top + ph - y(v),
                        COLORS[k % COLORS.len()],
                        x + 10.0,
                        y(v) - 3.0,
                        v
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">n/a</text>"#,
                        x + 10.0,
                        top + ph - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + 12.0 * systems.len() as f64,
            top + ph + 18.0,
            esc(cat)
        );
    }
    for (k, name) in systems.iter().enumerate() {
        let yy = top + 10.0 + k as f64 * 18.0;
        let x = w - 170.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            yy - 10.0,
            COLORS[k % COLORS.len()],
            x + 18.0,
            yy,
            esc(name)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{:.1}">efficiency = ideal time / median measured time</text>"#,
        h - 20.0
    );
    s.push_str("</svg>\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: System, size: u64, rep: usize, secs: f64, err: bool) -> Row {
        Row {
            scenario: "two".into(),
            system,
            size_mib: size,
            rep,
            secs,
            ttfb_s: 0.02,
            ideal_s: 7.0,
            wan_share: vec![0.5, 0.5],
            error: err.then(|| "DIFFERS at byte 3".to_owned()),
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn failed_downloads_do_not_count_towards_the_median() {
        let rows = vec![
            row(System::TandemDynamic, 32, 0, 7.5, false),
            row(System::TandemDynamic, 32, 1, 1.0, true), // corrupt: ignored
            row(System::TandemDynamic, 32, 2, 8.5, false),
            row(System::Plain, 32, 0, 14.0, false),
            row(System::Plain, 8, 0, 3.6, false),
        ];
        let s = summarise(&rows);
        let d = s
            .iter()
            .find(|x| x.system == System::TandemDynamic)
            .unwrap();
        assert_eq!((d.ok, d.failed), (2, 1));
        assert_eq!(d.median_s, 8.0);
        assert!((d.efficiency - 7.0 / 8.0).abs() < 1e-12);
        // Sizes ascending within the scenario.
        assert_eq!(s[0].size_mib, 8);
        let t = table(&s, &[("two".into(), "2 routers".into())]);
        assert!(t.contains("2 routers") && t.contains("tandem dynamic") && t.contains("0.875"));
        let csv = rows_csv(&rows);
        assert_eq!(csv.lines().count(), 6);
        assert!(csv.contains("DIFFERS at byte 3"));
    }

    #[test]
    fn bars_svg_draws_every_bar_and_target() {
        let svg = bars_svg(
            "t",
            &["8 MiB".into(), "32 MiB".into()],
            &["plain".into(), "tandem".into()],
            &[vec![Some(0.48), Some(0.9)], vec![Some(0.49), None]],
            &[(0.97, "target 0.97".into())],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("n/a") && svg.contains("target 0.97"));
    }
}
