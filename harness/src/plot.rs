//! The benchmark's latency plot, an SVG written by hand (no plotting crate): the
//! distribution function of each series' latencies on a log-scale latency axis,
//! left all requests, right the slowest 10 % stretched out, one legend with each
//! series' p50 and p99.

use std::fmt::Write as _;
use std::time::Duration;

/// One line of the plot.
pub struct Series {
    pub label: String,
    pub latencies: Vec<Duration>,
}

/// Line colours in series order (the bench's order: plain, then the wasm pair, then
/// the native pair, each do-nothing module lighter than the real one).
const COLOURS: [&str; 6] = ["#333333", "#74a9cf", "#0b4f8a", "#fdae6b", "#c94300", "#31a354"];
const WIDTH: f64 = 920.0;
const PANEL_WIDTH: f64 = 360.0;
const PANEL_HEIGHT: f64 = 280.0;
const LEFT: f64 = 70.0;
const GAP: f64 = 90.0;
const TOP: f64 = 60.0;
const LEGEND_ROW: f64 = 20.0;
/// Points per line and panel.
const POINTS: usize = 400;

/// The SVG document.
pub fn latency_cdf(title: &str, series: &[Series]) -> String {
    let sorted: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            let mut ms: Vec<f64> = s.latencies.iter().map(|d| d.as_secs_f64() * 1e3).filter(|v| *v > 0.0).collect();
            ms.sort_by(f64::total_cmp);
            ms
        })
        .collect();
    let all = sorted.iter().flatten().copied();
    let (lowest, highest) = all.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let axis = if lowest.is_finite() { LogAxis::spanning(lowest, highest) } else { LogAxis::spanning(0.1, 10.0) };
    let legend_top = TOP + PANEL_HEIGHT + 60.0;
    let height = legend_top + LEGEND_ROW * series.len() as f64 + 20.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    let panels = [(LEFT, 0.0, "all requests"), (LEFT + PANEL_WIDTH + GAP, 0.9, "the slowest 10 %")];
    for (x0, from, name) in panels {
        let panel = Panel { x0, from, axis: &axis };
        panel.frame(&mut svg, name);
        for (i, ms) in sorted.iter().enumerate() {
            panel.line(&mut svg, ms, colour(i));
        }
    }
    for (i, (s, ms)) in series.iter().zip(&sorted).enumerate() {
        let y = legend_top + LEGEND_ROW * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2.5"/>"#,
            LEFT + 28.0,
            colour(i)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text><text x="{}" y="{}">p50 {:.2} ms   p99 {:.2} ms   ({} requests)</text>"#,
            LEFT + 36.0,
            y + 4.0,
            escape(&s.label),
            LEFT + 160.0,
            y + 4.0,
            quantile(ms, 0.5),
            quantile(ms, 0.99),
            ms.len()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The value below which a fraction `q` of the sorted samples lie (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(rank).copied().unwrap_or_default()
}

fn colour(i: usize) -> &'static str {
    COLOURS.get(i % COLOURS.len()).copied().unwrap_or("black")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Milliseconds on a log scale, whole decades from below the lowest to above the highest.
struct LogAxis {
    low: f64,
    high: f64,
}

impl LogAxis {
    fn spanning(lowest: f64, highest: f64) -> Self {
        let low = lowest.log10().floor();
        let high = highest.log10().ceil().max(low + 1.0);
        Self { low, high }
    }

    /// 0 at the left end, 1 at the right.
    fn position(&self, ms: f64) -> f64 {
        (ms.log10() - self.low) / (self.high - self.low)
    }

    /// Ticks at 1, 2 and 5 of each decade, the labels of 1 and those of 2 and 5 in
    /// decades few enough to leave room.
    fn ticks(&self) -> Vec<(f64, bool)> {
        let decades = (self.high - self.low) as i32;
        let mut ticks = Vec::new();
        for decade in (self.low as i32)..=(self.high as i32) {
            for step in [1.0, 2.0, 5.0] {
                let ms = step * 10f64.powi(decade);
                if ms.log10() <= self.high + 1e-9 {
                    ticks.push((ms, step == 1.0 || decades <= 3));
                }
            }
        }
        ticks
    }
}

/// One panel: the distribution function from fraction `from` to 1.
struct Panel<'a> {
    x0: f64,
    from: f64,
    axis: &'a LogAxis,
}

impl Panel<'_> {
    fn x(&self, ms: f64) -> f64 {
        self.x0 + self.axis.position(ms) * PANEL_WIDTH
    }

    fn y(&self, fraction: f64) -> f64 {
        TOP + PANEL_HEIGHT * (1.0 - (fraction - self.from) / (1.0 - self.from))
    }

    fn frame(&self, svg: &mut String, name: &str) {
        let (x0, x1, y1) = (self.x0, self.x0 + PANEL_WIDTH, TOP + PANEL_HEIGHT);
        let _ = writeln!(svg, r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#, TOP - 10.0, escape(name));
        for (ms, labelled) in self.axis.ticks() {
            let x = self.x(ms);
            let _ = writeln!(svg, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{y1}" stroke="#e4e4e4"/>"##);
            if labelled {
                let _ = writeln!(
                    svg,
                    r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                    y1 + 16.0,
                    format_ms(ms)
                );
            }
        }
        let steps = 5;
        for k in 0..=steps {
            let fraction = self.from + (1.0 - self.from) * k as f64 / steps as f64;
            let y = self.y(fraction);
            let _ = writeln!(svg, r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e4e4e4"/>"##);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{} %</text>"#,
                x0 - 6.0,
                y + 4.0,
                fraction * 100.0
            );
        }
        for (fraction, name) in [(0.5, "p50"), (0.99, "p99")] {
            if fraction > self.from {
                let y = self.y(fraction);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#999999" stroke-dasharray="4 3"/><text x="{}" y="{:.1}" fill="#777777">{name}</text>"##,
                    x1 + 4.0,
                    y + 4.0
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{x0}" y="{TOP}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">latency, ms (log scale)</text>"#,
            x0 + PANEL_WIDTH / 2.0,
            y1 + 36.0
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">requests answered within</text>"#,
            x0 - 50.0,
            TOP + PANEL_HEIGHT / 2.0
        );
    }

    /// The sorted samples as a step line: the fraction answered within each latency.
    fn line(&self, svg: &mut String, sorted: &[f64], colour: &str) {
        if sorted.is_empty() {
            return;
        }
        let mut points = String::new();
        for k in 0..=POINTS {
            let fraction = self.from + (1.0 - self.from) * k as f64 / POINTS as f64;
            let _ = write!(points, "{:.1},{:.1} ", self.x(quantile(sorted, fraction)), self.y(fraction));
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"/>"#,
            points.trim_end()
        );
    }
}

fn format_ms(ms: f64) -> String {
    if ms >= 1.0 { format!("{ms:.0}") } else { format!("{ms}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(quantile(&sorted, 0.5), 5.0);
        assert_eq!(quantile(&sorted, 0.99), 10.0);
        assert_eq!(quantile(&sorted, 0.0), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_axis_spans_whole_decades() {
        let axis = LogAxis::spanning(0.42, 17.0);
        assert_eq!((axis.low, axis.high), (-1.0, 2.0));
        assert_eq!(axis.position(1.0), 1.0 / 3.0);
        let labels: Vec<String> = axis.ticks().iter().filter(|t| t.1).map(|t| format_ms(t.0)).collect();
        assert_eq!(labels, ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100"]);
    }

    #[test]
    fn the_plot_has_a_line_and_a_legend_entry_per_series() {
        let series = [
            Series { label: "plain".into(), latencies: (1..=100).map(Duration::from_micros).collect() },
            Series { label: "a<b".into(), latencies: (1..=100).map(|n| Duration::from_micros(2 * n)).collect() },
        ];
        let svg = latency_cdf("latency", &series);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">plain</text>"));
        assert!(svg.contains(">a&lt;b</text>"));
        assert!(svg.contains("p50 0.05 ms   p99 0.10 ms   (100 requests)"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
