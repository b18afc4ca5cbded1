//! `tinykd targets`, `tinykd build`, `tinykd run`: the deployment targets,
//! building one with a model inside, and running it under QEMU.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use tinykd::targets::{self, firmware_size, Kind, Target, TARGETS};

/// Options of `tinykd build`.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// The target (see `tinykd targets`).
    #[arg(long)]
    target: String,
    /// The ONNX model to put inside.
    #[arg(long)]
    model: PathBuf,
    /// An input (.npy, f32) a firmware embeds and runs at start-up
    /// (default: the demo's sample).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to put the build (the ELF / binary / library, header, model).
    #[arg(long)]
    out: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `tinykd run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The target (see `tinykd targets`).
    #[arg(long)]
    target: String,
    /// The ONNX model.
    #[arg(long)]
    model: PathBuf,
    /// The input (.npy, f32).
    #[arg(long)]
    input: PathBuf,
    /// Seconds before the emulator (or board) run is stopped.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Run a firmware on a real board through a debug probe instead of QEMU:
    /// `probe-rs run --chip CHIP` (the firmware is built for hardware: cycle
    /// counter instead of the emulator's timer).
    #[arg(long, value_name = "CHIP", conflicts_with = "ssh")]
    probe: Option<String>,
    /// Run a Linux app on a board over ssh (`user@host`) instead of QEMU:
    /// the binary, model and input are copied to /tmp/tinykd there.
    #[arg(long, value_name = "HOST")]
    ssh: Option<String>,
}

/// The repository root: targets are built from its `targets/` folder.
fn root() -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    cwd.ancestors()
        .find(|d| d.join("targets/README.md").is_file() && d.join("runtime").is_dir())
        .map(Path::to_path_buf)
        .context("run tinykd build/run inside the tinykd repository (its targets/ folder holds the target crates)")
}

/// `tinykd targets`.
pub fn list(json: bool) -> Result<()> {
    let rows: Vec<_> = TARGETS.iter().map(|t| (t, t.missing())).collect();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(t, missing)| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["ready"] = missing.is_empty().into();
                v["missing"] = serde_json::to_value(missing).unwrap_or_default();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<31} {:<10} {:<28} {:<8} boards",
        "target", "triple", "kind", "SIMD path", "ready"
    );
    for (t, missing) in rows {
        let kind = match t.kind {
            Kind::Firmware => "firmware",
            Kind::LinuxApp => "linux app",
            Kind::StaticLib => "staticlib",
        };
        let ready = if missing.is_empty() {
            "yes".to_string()
        } else {
            format!("no: {}", missing.join(", "))
        };
        println!(
            "{:<14} {:<31} {:<10} {:<28} {:<8} {}",
            t.name, t.triple, kind, t.simd, ready, t.boards
        );
    }
    Ok(())
}

/// Parses `stack high-water: A bytes loading (parse), B bytes running`.
fn stack_high_water(output: &str) -> Option<(u64, u64)> {
    let line = output
        .lines()
        .find(|l| l.starts_with("stack high-water:"))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    }
}

/// Runs `program args…` with a timeout; its output, or why it failed.
fn run_captured(t: &Target, cmd: &[String], timeout: u64) -> Result<(bool, String)> {
    let out = Command::new("timeout")
        .arg(timeout.to_string())
        .args(cmd)
        .output()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if out.status.code() == Some(124) {
        bail!("target {}: no result within {timeout} s", t.name);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The command that runs `artifact` of `t` on `model` and `input` here.
fn run_command(
    t: &Target,
    root: &Path,
    artifact: &Path,
    model: &Path,
    input: &Path,
) -> Vec<String> {
    let mut cmd: Vec<String> = t.runner.iter().map(|s| s.to_string()).collect();
    match t.kind {
        Kind::Firmware => cmd.push(artifact.display().to_string()),
        Kind::LinuxApp => cmd.extend([
            artifact.display().to_string(),
            model.display().to_string(),
            input.display().to_string(),
        ]),
        Kind::StaticLib => {
            cmd = vec![
                "bash".into(),
                root.join(t.folder).join("run.sh").display().to_string(),
                model.display().to_string(),
                input.display().to_string(),
            ]
        }
    }
    cmd
}

/// `tinykd build`.
pub fn build(a: &BuildArgs) -> Result<()> {
    let t = targets::find(&a.target)?;
    let root = root()?;
    let model_bytes =
        std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let model = tinykd_runtime::Model::parse(&model_bytes)
        .with_context(|| format!("{}: the runtime does not load it", a.model.display()))?;
    let arena = model.arena_size() as u64;
    let artifacts = t.cargo_build(&root, &a.model, a.input.as_deref(), false)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = a.out.join(name);
        let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        tinykd::tensor_file::write_atomically(&to, &bytes)?;
        Ok(to)
    };
    let mut summary = serde_json::json!({
        "target": t.name, "triple": t.triple, "model": a.model, "simd": t.simd,
        "arena_bytes": arena, "weights_bytes": model_bytes.len(),
    });
    match t.kind {
        Kind::Firmware => {
            let elf = copy(&artifacts[0], &format!("{}.elf", t.name))?;
            let size = firmware_size(&elf, model_bytes.len() as u64)?;
            summary["elf"] = elf.display().to_string().into();
            summary["flash"] = serde_json::to_value(size)?;
            // The stack high-water marks come from a run: stack painting.
            if t.missing().is_empty() {
                let cmd = run_command(t, &root, &elf, &a.model, Path::new(""));
                let (ok, text) = run_captured(t, &cmd, 600)?;
                if let (true, Some((parse, run))) = (ok, stack_high_water(&text)) {
                    summary["stack_high_water"] =
                        serde_json::json!({"loading": parse, "running": run});
                }
            }
            if !a.json {
                println!("{} ({}): {}", t.name, t.triple, elf.display());
                println!(
                    "flash: {} B code + {} B weights (the model, read in place) = {} B",
                    size.flash_code,
                    size.flash_weights,
                    size.flash_code + size.flash_weights
                );
                let stack = summary["stack_high_water"]["running"].as_u64().map_or(
                    "stack: not measured".into(),
                    |s| {
                        format!(
                            "stack high-water {s} B running, {} B loading",
                            summary["stack_high_water"]["loading"]
                        )
                    },
                );
                println!(
                    "RAM: arena {arena} B (inside {} B of static RAM); {stack}",
                    size.ram_static
                );
            }
        }
        Kind::LinuxApp => {
            let bin = copy(&artifacts[0], "tinykd-app")?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
            }
            let model_copy = copy(&a.model, "model.onnx")?;
            let code = std::fs::metadata(&bin)?.len();
            summary["binary"] = bin.display().to_string().into();
            summary["binary_bytes"] = code.into();
            if !a.json {
                println!(
                    "{} ({}): {} and {}",
                    t.name,
                    t.triple,
                    bin.display(),
                    model_copy.display()
                );
                println!(
                    "size: {code} B executable (statically linked runtime) + {} B model; RAM: arena {arena} B",
                    model_bytes.len()
                );
                println!(
                    "run it with: {} {} {} INPUT.npy",
                    t.runner.join(" "),
                    bin.display(),
                    model_copy.display()
                );
            }
        }
        Kind::StaticLib => {
            let lib = copy(&artifacts[0], "libtinykd.a")?;
            let header = copy(&root.join(t.folder).join("include/tinykd.h"), "tinykd.h")?;
            copy(&a.model, "model.onnx")?;
            summary["library"] = lib.display().to_string().into();
            summary["header"] = header.display().to_string().into();
            if !a.json {
                println!(
                    "{} ({}): {} + {} (+ model.onnx); library {} B, arena {arena} B",
                    t.name,
                    t.triple,
                    lib.display(),
                    header.display(),
                    std::fs::metadata(&lib)?.len()
                );
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

/// `tinykd run`.
pub fn run(a: &RunArgs) -> Result<()> {
    let t = targets::find(&a.target)?;
    let root = root()?;
    let input = a
        .input
        .canonicalize()
        .with_context(|| format!("{}", a.input.display()))?;
    let model = a
        .model
        .canonicalize()
        .with_context(|| format!("{}", a.model.display()))?;
    match (&a.probe, &a.ssh, t.kind) {
        (Some(_), _, Kind::Firmware) | (None, Some(_), Kind::LinuxApp) | (None, None, _) => {}
        _ => bail!(
            "target {}: --probe runs firmwares and --ssh Linux apps",
            t.name
        ),
    }
    let hardware = a.probe.is_some();
    let artifacts = t.cargo_build(&root, &model, Some(&input), hardware)?;
    let cmd = match (&a.probe, &a.ssh, t.kind) {
        (Some(chip), _, Kind::Firmware) => vec![
            "probe-rs".into(),
            "run".into(),
            "--chip".into(),
            chip.clone(),
            artifacts[0].display().to_string(),
        ],
        (None, Some(host), Kind::LinuxApp) => {
            // The rpi crate's ssh runner copies the files and runs them there.
            let script = root.join("targets/rpi/ssh-run.sh");
            vec![
                "env".into(),
                format!("TINYKD_PI={host}"),
                "sh".into(),
                script.display().to_string(),
                artifacts[0].display().to_string(),
                model.display().to_string(),
                input.display().to_string(),
            ]
        }
        _ => run_command(t, &root, &artifacts[0], &model, &input),
    };
    eprintln!("+ {}", cmd.join(" "));
    let (ok, text) = run_captured(t, &cmd, a.timeout)?;
    print!("{text}");
    if !ok {
        bail!("target {}: the run failed", t.name);
    }
    // The same first input on this machine, for the prediction side by side.
    let (best, label) = host_prediction(&model, &input)?;
    let on_target = text
        .lines()
        .find_map(|l| l.strip_prefix("argmax = "))
        .unwrap_or("?");
    println!(
        "prediction: {} on {} — {best} ({label}) on the host (tinykd runtime, {} kernels)",
        on_target,
        t.name,
        tinykd_runtime::kernels::simd_path()
    );
    Ok(())
}

/// The host runtime's argmax and class name for the first input in `input`.
fn host_prediction(model_path: &Path, input: &Path) -> Result<(usize, String)> {
    let bytes = std::fs::read(model_path)?;
    let model = tinykd_runtime::Model::parse(&bytes)
        .with_context(|| format!("{}", model_path.display()))?;
    let x = tinykd::tensor_file::HostTensor::read_npy(input)?;
    let x = x
        .as_f32()
        .with_context(|| format!("{}: not an f32 array", input.display()))?;
    let in_len = model.inputs().next().map_or(0, |v| v.len());
    let out_len = model.outputs().next().map_or(0, |v| v.len());
    if in_len == 0 || x.len() < in_len {
        bail!("{}: fewer values than the model's input", input.display());
    }
    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = tinykd_runtime::Session::new(&model, &mut arena)?;
    let mut y = vec![0f32; out_len];
    session.run(&[&x[..in_len]], &mut [&mut y[..]])?;
    let best = y
        .iter()
        .enumerate()
        .fold(0, |b, (i, v)| if *v > y[b] { i } else { b });
    let label = tinykd::inspect::class_labels(&bytes)
        .and_then(|l| l.get(best).cloned())
        .unwrap_or_default();
    Ok((best, label))
}
