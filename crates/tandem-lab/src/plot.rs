//! Hand-written SVG plots and CSV of throughput over time, one panel per
//! run, one line per source. Pure functions: data in, text out.

use std::fmt::Write as _;

/// One line of a plot: a source's throughput samples.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text, e.g. "A uplink".
    pub name: String,
    /// (seconds since the run started, Mbit/s).
    pub points: Vec<(f64, f64)>,
}

/// One panel (one run) of a plot.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Panel title, e.g. "A alone — 14.0 s".
    pub title: String,
    /// Lines in the panel.
    pub series: Vec<Series>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const W: f64 = 760.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

/// Renders the panels stacked vertically with a shared time axis, so runs
/// can be compared by eye. `y_ref` draws a dashed reference line (e.g. the
/// per-uplink shape rate) when > 0.
pub fn svg(title: &str, panels: &[Panel], y_ref: f64) -> String {
    let t_max = panels
        .iter()
        .flat_map(|p| p.series.iter())
        .flat_map(|s| s.points.iter().map(|&(t, _)| t))
        .fold(1.0_f64, f64::max);
    let y_data = panels
        .iter()
        .flat_map(|p| p.series.iter())
        .flat_map(|s| s.points.iter().map(|&(_, y)| y))
        .fold(y_ref, f64::max);
    let (y_step, y_max) = axis(y_data.max(1.0) * 1.05);
    let (t_step, t_top) = axis(t_max);
    let plot_w = W - LEFT - RIGHT;
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="16" font-weight="bold">{}</text>"#,
        LEFT,
        esc(title)
    );
    for (pi, panel) in panels.iter().enumerate() {
        let y0 = TOP + pi as f64 * (PANEL_H + GAP) + 20.0; // top of plot area
        let x = |t: f64| LEFT + t / t_top * plot_w;
        let y = |v: f64| y0 + PANEL_H - v / y_max * PANEL_H;
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            y0 - 6.0,
            esc(&panel.title)
        );
        // Grid and axes.
        for k in 0..=((y_max / y_step).round() as u32) {
            let v = y_step * f64::from(k);
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                yy + 4.0,
                fmt_num(v)
            );
        }
        for k in 0..=((t_top / t_step).round() as u32) {
            let t = t_step * f64::from(k);
            let xx = x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{y0}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{} s</text>"##,
                y0 + PANEL_H,
                y0 + PANEL_H + 16.0,
                fmt_num(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#888"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">Mbit/s</text>"#,
            y0 + PANEL_H / 2.0
        );
        if y_ref > 0.0 {
            let yy = y(y_ref);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#999" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" fill="#777">uplink {} Mbit/s</text>"##,
                LEFT + plot_w,
                LEFT + plot_w + 6.0,
                yy + 4.0,
                fmt_num(y_ref)
            );
        }
        for (si, series) in panel.series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            if !series.points.is_empty() {
                let pts: Vec<String> = series
                    .points
                    .iter()
                    .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v.clamp(0.0, y_max))))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    pts.join(" ")
                );
            }
            let ly = y0 + 14.0 + si as f64 * 18.0;
            let lx = LEFT + plot_w + 12.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                ly - 4.0,
                lx + 18.0,
                ly - 4.0,
                lx + 24.0,
                ly,
                esc(&series.name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// CSV with one row per sample: `panel,source,seconds,mbit_per_s`.
pub fn csv(panels: &[Panel]) -> String {
    let mut s = String::from("run,source,seconds,mbit_per_s\n");
    for p in panels {
        for se in &p.series {
            for &(t, v) in &se.points {
                let _ = writeln!(
                    s,
                    "{},{},{t:.3},{v:.3}",
                    csv_field(&p.title),
                    csv_field(&se.name)
                );
            }
        }
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A tick step of 1, 2 or 5 × 10^k giving at most 6 intervals, and the axis
/// maximum: the smallest multiple of the step >= v.
fn axis(v: f64) -> (f64, f64) {
    if v <= 0.0 || !v.is_finite() {
        return (1.0, 1.0);
    }
    let raw = v / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw - 1e-12)
        .unwrap_or(10.0 * mag);
    (step, (v / step - 1e-9).ceil().max(1.0) * step)
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panels() -> Vec<Panel> {
        vec![
            Panel {
                title: "A alone".into(),
                series: vec![Series {
                    name: "A uplink".into(),
                    points: vec![(0.0, 0.0), (1.0, 19.0), (14.0, 19.5)],
                }],
            },
            Panel {
                title: "A + B <tandem>".into(),
                series: vec![
                    Series {
                        name: "A uplink".into(),
                        points: vec![(0.0, 0.0), (7.0, 19.0)],
                    },
                    Series {
                        name: "B, uplink".into(),
                        points: vec![(0.0, 0.0), (7.0, 18.0)],
                    },
                ],
            },
        ]
    }

    #[test]
    fn svg_is_well_formed_and_escaped() {
        let s = svg("32 MiB & friends", &panels(), 20.0);
        assert!(s.starts_with("<svg ") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert!(s.contains("32 MiB &amp; friends"));
        assert!(s.contains("A + B &lt;tandem&gt;"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        // Shared axis: 14 s rounds up to 15 s in both panels.
        assert_eq!(s.matches(">15 s</text>").count(), 2);
    }

    #[test]
    fn csv_has_every_sample() {
        let c = csv(&panels());
        assert_eq!(c.lines().count(), 1 + 3 + 2 + 2);
        assert!(c.contains("\"B, uplink\""));
        assert!(c.contains("A alone,A uplink,14.000,19.500"));
    }

    #[test]
    fn axis_rounding() {
        assert_eq!(axis(14.4), (5.0, 15.0));
        assert_eq!(axis(21.0), (5.0, 25.0));
        assert_eq!(axis(44.0), (10.0, 50.0));
        assert_eq!(axis(6.0), (1.0, 6.0));
        assert_eq!(axis(0.0), (1.0, 1.0));
        assert_eq!(axis(f64::NAN), (1.0, 1.0));
        let empty = svg("x", &[], 0.0);
        assert!(empty.contains("</svg>"));
    }
}
