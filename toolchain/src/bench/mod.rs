//! `tinykd bench`: single-image inference latency of tinykd's runtime side
//! by side with tract and ONNX Runtime, on the same inputs, in one process.
//!
//! Shared machines are noisy, so every claim is a ratio measured in one
//! run: each engine is prepared and warmed up once, then the timed runs are
//! interleaved (tinykd, tract, ORT, tinykd, …) so that load changes hit
//! every engine alike; the report gives the median, p10 and p90 of each and
//! its ratio to the fastest peer. Batch 1, one thread: what devices run.

mod runners;

use runners::Runner;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// An inference engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// tinykd's runtime (the one devices run).
    Tinykd,
    /// tract's optimized plan.
    Tract,
    /// ONNX Runtime (`ort` feature; the library from the venv).
    Ort,
}

/// Errors of a benchmark; each names the model and engine.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine could not load or run the model.
    #[error("{path}, {engine:?}: {reason}", path = path.display())]
    Engine {
        /// The model.
        path: PathBuf,
        /// The engine.
        engine: Engine,
        /// What failed.
        reason: String,
    },
    /// The model cannot be read.
    #[error("{path}: {source}", path = path.display())]
    Read {
        /// The model.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Untimed runs per engine before measuring.
    pub warmup: usize,
    /// Timed runs per engine.
    pub iters: usize,
    /// A `tinykd` executable to measure each engine's peak memory with, in
    /// a fresh process per engine and model (`tinykd bench --memory-probe`);
    /// None skips that measurement.
    pub memory_probe: Option<PathBuf>,
}

/// One engine's figures on one model.
#[derive(Clone, Debug, Serialize)]
pub struct EngineResult {
    /// The engine.
    pub engine: Engine,
    /// Median latency, microseconds.
    pub median_us: f64,
    /// 10th percentile, microseconds.
    pub p10_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// Median over the fastest peer's median (tract or ORT; 1.0 for the
    /// fastest peer itself); `None` without a peer.
    pub vs_best_peer: Option<f64>,
    /// Memory: the arena for tinykd, resident-set growth while loading and
    /// warming up for the others (bytes).
    pub memory_bytes: u64,
    /// Peak resident-set growth of a fresh process loading the model into
    /// the engine and running it (bytes; see [`peak_memory_probe`]); None
    /// where not measured.
    pub peak_rss_bytes: Option<u64>,
}

/// All engines' figures on one model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelResult {
    /// The model file.
    pub model: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// The input shape run (batch 1).
    pub input_shape: Vec<usize>,
    /// tinykd's arena for one image, and the largest total of tensors live
    /// at once (no plan can use less): the planner's quality is their ratio.
    pub arena: Option<ArenaQuality>,
    /// Per engine, in the order asked for.
    pub engines: Vec<EngineResult>,
}

/// The runtime planner's arena against the lower bound.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ArenaQuality {
    /// Arena bytes the plan uses.
    pub arena_bytes: u64,
    /// Largest set of simultaneously live tensors, bytes.
    pub lower_bound: u64,
    /// `arena_bytes / lower_bound`.
    pub ratio: f64,
}

/// Benchmarks `path` on `engines` (see the module docs).
pub fn bench_model(
    path: &Path,
    engines: &[Engine],
    cfg: &BenchConfig,
) -> Result<ModelResult, BenchError> {
    let bytes = std::fs::read(path).map_err(|source| BenchError::Read {
        path: path.into(),
        source,
    })?;
    let (shape, input) = runners::input_for(path, &bytes)?;
    let mut prepared: Vec<(Engine, Box<dyn Runner>, u64)> = Vec::new();
    for &engine in engines {
        let before = status_bytes("VmRSS");
        let mut r = runners::open(engine, path, &bytes, &shape, &input)?;
        for _ in 0..cfg.warmup.max(1) {
            r.run()?;
        }
        let memory = r
            .arena_bytes()
            .unwrap_or_else(|| status_bytes("VmRSS").saturating_sub(before));
        prepared.push((engine, r, memory));
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(cfg.iters); prepared.len()];
    for _ in 0..cfg.iters.max(1) {
        for (k, (_, r, _)) in prepared.iter_mut().enumerate() {
            let t = Instant::now();
            r.run()?;
            samples[k].push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let mut results: Vec<EngineResult> = prepared
        .iter()
        .zip(&mut samples)
        .map(|((engine, _, memory), s)| {
            s.sort_by(f64::total_cmp);
            EngineResult {
                engine: *engine,
                median_us: percentile(s, 0.5),
                p10_us: percentile(s, 0.1),
                p90_us: percentile(s, 0.9),
                vs_best_peer: None,
                memory_bytes: *memory,
                peak_rss_bytes: cfg
                    .memory_probe
                    .as_deref()
                    .and_then(|exe| peak_memory_in_child(exe, path, *engine)),
            }
        })
        .collect();
    let best_peer = results
        .iter()
        .filter(|r| r.engine != Engine::Tinykd)
        .map(|r| r.median_us)
        .reduce(f64::min);
    if let Some(best) = best_peer {
        for r in &mut results {
            r.vs_best_peer = Some(r.median_us / best);
        }
    }
    let arena = tinykd_runtime::Model::parse(&bytes).ok().map(|m| {
        let (a, lb) = (m.arena_size() as u64, m.plan().lower_bound as u64);
        ArenaQuality {
            arena_bytes: a,
            lower_bound: lb,
            ratio: a as f64 / lb.max(1) as f64,
        }
    });
    Ok(ModelResult {
        model: path.into(),
        file_bytes: bytes.len() as u64,
        input_shape: shape,
        arena,
        engines: results,
    })
}

/// The value at fraction `q` of sorted `s` (nearest rank).
fn percentile(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    s[i.min(s.len() - 1)]
}

/// Runs given before the peak is read in [`peak_memory_probe`].
const PROBE_RUNS: usize = 5;

/// Peak resident-set growth while `engine` loads `path` and runs it a few
/// times, in bytes: the peak (`VmHWM`, reset first through
/// `/proc/self/clear_refs`) over the resident set after reading the file.
/// Meaningful in a fresh process, where no freed memory hides the growth:
/// `tinykd bench --memory-probe ENGINE MODEL` runs it (see
/// [`BenchConfig::memory_probe`]).
pub fn peak_memory_probe(path: &Path, engine: Engine) -> Result<u64, BenchError> {
    let bytes = std::fs::read(path).map_err(|source| BenchError::Read {
        path: path.into(),
        source,
    })?;
    let (shape, input) = runners::input_for(path, &bytes)?;
    // "5" resets the peak to the current resident set (Linux ≥ 4.0); where
    // it fails, the peak since start-up is an upper bound.
    std::fs::write("/proc/self/clear_refs", "5").ok();
    let before = status_bytes("VmRSS");
    let mut r = runners::open(engine, path, &bytes, &shape, &input)?;
    for _ in 0..PROBE_RUNS {
        r.run()?;
    }
    let peak = status_bytes("VmHWM").max(status_bytes("VmRSS"));
    drop(r);
    Ok(peak.saturating_sub(before))
}

/// [`peak_memory_probe`] in a child process `exe bench --memory-probe`;
/// None if it cannot run there (the table then shows no figure).
fn peak_memory_in_child(exe: &Path, path: &Path, engine: Engine) -> Option<u64> {
    let name = format!("{engine:?}").to_lowercase();
    let out = std::process::Command::new(exe)
        .args(["bench", "--memory-probe", &name])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A `kB` line of /proc/self/status in bytes (0 where there is none).
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes `results.json`, `results.md` (the table) and `results.png`
/// (median latency per model and engine) into `dir`, each atomically.
pub fn write_results(dir: &Path, results: &[ModelResult], machine: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_vec_pretty(results).map_err(|e| e.to_string())?;
    crate::tensor_file::write_atomically(&dir.join("results.json"), &json)
        .map_err(|e| e.to_string())?;
    let md = format!(
        "# Inference benchmark\n\nRegenerated by `make bench` (`tinykd bench --out-dir bench`): {machine}; \
         batch 1, one thread, runs interleaved between engines, medians.\n\n{}\n{}\n![median latency](results.png)\n",
        markdown_table(results),
        arena_table(results)
    );
    crate::tensor_file::write_atomically(&dir.join("results.md"), md.as_bytes())
        .map_err(|e| e.to_string())?;
    let groups: Vec<crate::report::BarGroup> = results
        .iter()
        .map(|m| crate::report::BarGroup {
            label: short_name(&m.model),
            bars: m
                .engines
                .iter()
                .map(|e| (format!("{:?}", e.engine), e.median_us))
                .collect(),
        })
        .collect();
    crate::report::latency_bars_png(&dir.join("results.png"), "single-image latency", &groups)
        .map_err(|e| e.to_string())
}

fn short_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Markers around the table [`write_summary`] keeps in a Markdown file.
const SUMMARY_MARKERS: (&str, &str) = ("<!-- bench-summary -->", "<!-- /bench-summary -->");

/// Replaces the text between `<!-- bench-summary -->` and
/// `<!-- /bench-summary -->` in the Markdown file `doc` (the README) with
/// [`summary_table`], atomically; an error if the markers are missing.
pub fn write_summary(doc: &Path, results: &[ModelResult]) -> Result<(), String> {
    let old = std::fs::read_to_string(doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let (open, close) = SUMMARY_MARKERS;
    let (Some(start), Some(end)) = (old.find(open), old.find(close)) else {
        return Err(format!(
            "{}: no `{open}` … `{close}` markers",
            doc.display()
        ));
    };
    if end < start {
        return Err(format!(
            "{}: `{close}` comes before `{open}`",
            doc.display()
        ));
    }
    let new = format!(
        "{}{open}\n{}{}",
        &old[..start],
        summary_table(results),
        &old[end..]
    );
    crate::tensor_file::write_atomically(doc, new.as_bytes()).map_err(|e| e.to_string())
}

/// One row per model: each engine's median and tinykd's ratio to the
/// faster peer.
pub fn summary_table(results: &[ModelResult]) -> String {
    let mut s = String::from(
        "| model | tinykd µs | tract µs | ORT µs | tinykd vs best peer |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for m in results {
        let median = |engine| {
            m.engines
                .iter()
                .find(|e| e.engine == engine)
                .map_or("–".to_string(), |e| format!("{:.1}", e.median_us))
        };
        let ratio = m
            .engines
            .iter()
            .find(|e| e.engine == Engine::Tinykd)
            .and_then(|e| e.vs_best_peer)
            .map_or("–".to_string(), |r| format!("{r:.2}×"));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {ratio} |\n",
            short_name(&m.model),
            median(Engine::Tinykd),
            median(Engine::Tract),
            median(Engine::Ort),
        ));
    }
    s
}

/// The planner's arena against the lower bound, one row per model.
pub fn arena_table(results: &[ModelResult]) -> String {
    let mut s = String::from(
        "| model | arena bytes | lower bound (live tensors) | ratio |\n| --- | ---: | ---: | ---: |\n",
    );
    for m in results {
        if let Some(a) = m.arena {
            s.push_str(&format!(
                "| {} | {} | {} | {:.3} |\n",
                short_name(&m.model),
                a.arena_bytes,
                a.lower_bound,
                a.ratio
            ));
        }
    }
    s
}

/// The results as a Markdown table: one row per model and engine.
pub fn markdown_table(results: &[ModelResult]) -> String {
    let mut s = String::from(
        "| model | file bytes | engine | median µs | p10 µs | p90 µs | vs best peer | arena / RSS growth bytes | peak RSS growth bytes |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for m in results {
        let name = short_name(&m.model);
        for (i, e) in m.engines.iter().enumerate() {
            let (model, bytes) = if i == 0 {
                (name.clone(), m.file_bytes.to_string())
            } else {
                (String::new(), String::new())
            };
            s.push_str(&format!(
                "| {model} | {bytes} | {:?} | {:.1} | {:.1} | {:.1} | {} | {} | {} |\n",
                e.engine,
                e.median_us,
                e.p10_us,
                e.p90_us,
                e.vs_best_peer
                    .map_or("–".to_string(), |r| format!("{r:.2}×")),
                e.memory_bytes,
                e.peak_rss_bytes.map_or("–".to_string(), |b| b.to_string()),
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 6.0);
        assert_eq!(percentile(&s, 0.1), 2.0);
        assert_eq!(percentile(&s, 0.9), 10.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn the_demo_model_runs_on_tinykd_and_tract_with_ratios() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/fashion_mlp.onnx");
        let cfg = BenchConfig {
            warmup: 2,
            iters: 5,
            memory_probe: None,
        };
        let r = bench_model(&path, &[Engine::Tinykd, Engine::Tract], &cfg).unwrap();
        assert_eq!(r.input_shape, [1, 784]);
        assert_eq!(r.engines.len(), 2);
        let tract = &r.engines[1];
        assert_eq!(tract.vs_best_peer, Some(1.0));
        let ours = &r.engines[0];
        assert!(
            ours.median_us > 0.0 && ours.p10_us <= ours.median_us && ours.median_us <= ours.p90_us
        );
        assert_eq!(
            ours.memory_bytes, 6192,
            "the runtime's arena for the demo MLP"
        );
        let arena = r.arena.unwrap();
        assert_eq!(arena.arena_bytes, 6192);
        assert!(arena.lower_bound > 0 && arena.ratio >= 1.0, "{arena:?}");
        let dir = std::env::temp_dir().join(format!("tinykd-bench-{}", std::process::id()));
        write_results(&dir, std::slice::from_ref(&r), "test").unwrap();
        let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
        assert!(
            md.contains("| fashion_mlp.onnx | 407698 | Tinykd |"),
            "{md}"
        );
        assert!(std::fs::read(dir.join("results.png"))
            .unwrap()
            .starts_with(b"\x89PNG"));
        std::fs::remove_dir_all(&dir).ok();
        let readme = dir.join("README.md");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            &readme,
            "# x\n\n<!-- bench-summary -->\nold\n<!-- /bench-summary -->\n\nrest\n",
        )
        .unwrap();
        write_summary(&readme, std::slice::from_ref(&r)).unwrap();
        let text = std::fs::read_to_string(&readme).unwrap();
        assert!(
            text.contains("-->\n| model | tinykd µs |")
                && text.contains("| fashion_mlp.onnx | ")
                && !text.contains("old")
                && text.ends_with("<!-- /bench-summary -->\n\nrest\n"),
            "{text}"
        );
        std::fs::write(&readme, "no markers").unwrap();
        assert!(write_summary(&readme, std::slice::from_ref(&r)).is_err());
        std::fs::remove_dir_all(&dir).ok();
        let table = markdown_table(&[r]);
        assert_eq!(table.lines().count(), 4, "{table}");
        let grew = peak_memory_probe(&path, Engine::Tinykd).unwrap();
        assert!(grew > 0, "the runtime's model copy and arena are resident");
        let err = bench_model(Path::new("/nonexistent.onnx"), &[Engine::Tinykd], &cfg).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.onnx"), "{err}");
    }
}
