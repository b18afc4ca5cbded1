//! The deployment targets (`tinykd targets | build | run`): which board
//! families tinykd builds for, whether this machine has their toolchain,
//! and building one with a model inside.
//!
//! Each target is a crate under `targets/` with its own workspace (see
//! `targets/README.md`): MCU firmwares embed the model at build time
//! (`TINYKD_MODEL`, `TINYKD_INPUT`) and run under `qemu-system-*`; the Linux
//! apps read the model at run time and run under QEMU user mode; the Android
//! target is a static library with a C header. Building is `cargo build` in
//! that folder; this module finds what cargo made and measures it.

use object::{Object, ObjectSection};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a target folder builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A bare-metal firmware ELF with the model in flash.
    Firmware,
    /// A Linux executable that takes the model and input as files.
    LinuxApp,
    /// A static library plus C header, and a C demo program.
    StaticLib,
}

/// One deployment target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Target {
    /// The name on the command line, e.g. `cortex-m4`.
    pub name: &'static str,
    /// Boards it stands for.
    pub boards: &'static str,
    /// The Rust target triple.
    pub triple: &'static str,
    /// Its crate, relative to the repository root.
    pub folder: &'static str,
    /// What it builds.
    pub kind: Kind,
    /// The cargo target that is the deliverable (a bin, or the library).
    pub artifact: &'static str,
    /// The SIMD path its runtime build uses (see `tinykd_runtime::kernels`).
    pub simd: &'static str,
    /// The command that runs its output here (QEMU), program first.
    pub runner: &'static [&'static str],
    /// Programs it needs besides rustc's target: linker, emulator.
    pub tools: &'static [&'static str],
    /// Whether its crate forwards the runtime's op families as features, so
    /// that a build links only the kernels of the model's ops.
    pub op_families: bool,
}

/// Every target, in the order `tinykd targets` lists them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "host",
        boards: "this machine (x86_64 Linux)",
        triple: "x86_64-unknown-linux-gnu",
        folder: "targets/rpi",
        kind: Kind::LinuxApp,
        artifact: "tinykd-rpi",
        simd: "avx2 (detected at run time)",
        runner: &[],
        tools: &[],
        op_families: false,
    },
    Target {
        name: "cortex-m4",
        boards: "Cortex-M4F / M7 MCUs (QEMU mps2-an386)",
        triple: "thumbv7em-none-eabihf",
        folder: "targets/cortex-m4",
        kind: Kind::Firmware,
        artifact: "tinykd-cortex-m4",
        simd: "dsp",
        runner: &[
            "qemu-system-arm",
            "-M",
            "mps2-an386",
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
            "-icount",
            "shift=5",
            "-kernel",
        ],
        tools: &["qemu-system-arm"],
        op_families: true,
    },
    Target {
        name: "riscv32",
        boards: "RISC-V MCUs, RV32IMAC (QEMU virt)",
        triple: "riscv32imac-unknown-none-elf",
        folder: "targets/riscv32",
        kind: Kind::Firmware,
        artifact: "tinykd-riscv32",
        simd: "scalar",
        runner: &[
            "qemu-system-riscv32",
            "-M",
            "virt",
            "-bios",
            "none",
            "-nographic",
            "-semihosting",
            "-icount",
            "shift=0",
            "-kernel",
        ],
        tools: &["qemu-system-riscv32"],
        op_families: false,
    },
    Target {
        name: "rpi-arm64",
        boards: "Raspberry Pi 3/4/5 and other aarch64 Linux boards",
        triple: "aarch64-unknown-linux-gnu",
        folder: "targets/rpi",
        kind: Kind::LinuxApp,
        artifact: "tinykd-rpi",
        simd: "neon",
        runner: &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
        tools: &["aarch64-linux-gnu-gcc", "qemu-aarch64"],
        op_families: false,
    },
    Target {
        name: "rpi-armv7",
        boards: "Raspberry Pi 2/3 with 32-bit Linux (armv7 + NEON)",
        triple: "armv7-unknown-linux-gnueabihf",
        folder: "targets/rpi",
        kind: Kind::LinuxApp,
        artifact: "tinykd-rpi",
        simd: "armv7-neon",
        runner: &["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"],
        tools: &["arm-linux-gnueabihf-gcc", "qemu-arm"],
        op_families: false,
    },
    Target {
        name: "riscv64",
        boards: "RISC-V Linux boards with RVV 1.0",
        triple: "riscv64gc-unknown-linux-gnu",
        folder: "targets/riscv64",
        kind: Kind::LinuxApp,
        artifact: "tinykd-riscv64",
        simd: "rvv",
        runner: &[
            "qemu-riscv64",
            "-cpu",
            "rv64,v=true,vlen=128,vext_spec=v1.0",
            "-L",
            "/usr/riscv64-linux-gnu",
        ],
        tools: &["riscv64-linux-gnu-gcc", "qemu-riscv64"],
        op_families: false,
    },
    Target {
        name: "android-arm64",
        boards: "Android phones (aarch64), as a static library",
        triple: "aarch64-linux-android",
        folder: "targets/android",
        kind: Kind::StaticLib,
        artifact: "tinykd_android",
        simd: "neon",
        runner: &["qemu-aarch64"],
        tools: &["aarch64-linux-gnu-gcc", "qemu-aarch64"],
        op_families: false,
    },
];

/// The runtime's op families (cargo features, see
/// `tinykd_runtime::ops::families`) that the model at `path` uses, plus
/// `quant-u8` where it has uint8 tensors: what a firmware needs to link.
pub fn model_op_families(path: &Path) -> Result<Vec<&'static str>, TargetError> {
    let bytes = std::fs::read(path).map_err(|source| TargetError::Io {
        path: path.into(),
        source,
    })?;
    let model = tinykd_runtime::Model::parse(&bytes).map_err(|e| TargetError::Model {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let mut families: Vec<&'static str> = model
        .nodes()
        .iter()
        .flat_map(|n| tinykd_runtime::ops::families(n.op_type).iter().copied())
        .collect();
    if model
        .values()
        .iter()
        .any(|v| v.dtype == tinykd_runtime::DType::U8)
    {
        families.push("quant-u8");
    }
    families.sort_unstable();
    families.dedup();
    Ok(families)
}

/// Errors of building or running a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No target has that name.
    #[error("unknown target '{0}' (run `tinykd targets` for the list)")]
    Unknown(String),
    /// Something this machine lacks.
    #[error("target {target}: {missing} is not installed (run `make setup`)")]
    Missing {
        /// The target.
        target: &'static str,
        /// What is missing.
        missing: String,
    },
    /// cargo or the runner failed.
    #[error("target {target}: {reason}")]
    Failed {
        /// The target.
        target: &'static str,
        /// What failed, with its output.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The model the target is built with cannot be loaded.
    #[error("{path}: {reason}", path = path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// Why it cannot be loaded.
        reason: String,
    },
}

/// The target called `name`.
pub fn find(name: &str) -> Result<&'static Target, TargetError> {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TargetError::Unknown(name.into()))
}

/// Whether `program` is on the `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether rustc has the standard library (or `core`) for `triple`.
fn rust_target_installed(triple: &str) -> bool {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    sysroot.is_some_and(|s| Path::new(&s).join("lib/rustlib").join(triple).is_dir())
}

impl Target {
    /// What this machine lacks to build and run the target (empty: ready).
    pub fn missing(&self) -> Vec<String> {
        let mut m = Vec::new();
        if !rust_target_installed(self.triple) {
            m.push(format!("rustup target {}", self.triple));
        }
        m.extend(
            self.tools
                .iter()
                .filter(|t| !on_path(t))
                .map(|t| t.to_string()),
        );
        m
    }

    fn fail(&self, reason: impl Into<String>) -> TargetError {
        TargetError::Failed {
            target: self.name,
            reason: reason.into(),
        }
    }

    /// `cargo build --release` of the target's crate (under `root`) with the
    /// model `model` (and for firmwares the input `input`) inside; returns
    /// the artifacts cargo reports (executables, or the static library).
    /// `hardware`: for a real board, without the crate's default features
    /// (a firmware's emulator-only counter).
    pub fn cargo_build(
        &self,
        root: &Path,
        model: &Path,
        input: Option<&Path>,
        hardware: bool,
    ) -> Result<Vec<PathBuf>, TargetError> {
        if let Some(first) = self.missing().first() {
            return Err(TargetError::Missing {
                target: self.name,
                missing: first.clone(),
            });
        }
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root.join(self.folder))
            .args(["build", "--release", "--target", self.triple])
            .args(["--message-format", "json-render-diagnostics"])
            .env("TINYKD_MODEL", absolute(model)?);
        if let Some(input) = input {
            cmd.env("TINYKD_INPUT", absolute(input)?);
        }
        let mut features = Vec::new();
        if self.op_families {
            features = model_op_families(model)?;
            // Error messages in the firmware's output (its default).
            features.push("messages");
        }
        if hardware || self.op_families {
            cmd.arg("--no-default-features");
        }
        if self.op_families && !hardware {
            // The emulator's instruction counter (a default feature).
            features.push("qemu");
        }
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        match self.kind {
            Kind::StaticLib => cmd.arg("--lib"),
            // The deliverable only (a firmware crate also has self-tests).
            Kind::Firmware | Kind::LinuxApp => cmd.args(["--bin", self.artifact]),
        };
        let out = cmd
            .output()
            .map_err(|e| self.fail(format!("cannot run cargo: {e}")))?;
        if !out.status.success() {
            return Err(self.fail(format!(
                "cargo build failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut artifacts = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != self.artifact {
                continue;
            }
            if let Some(exe) = msg["executable"].as_str() {
                artifacts.push(PathBuf::from(exe));
            } else if let Some(files) = msg["filenames"].as_array() {
                artifacts.extend(
                    files
                        .iter()
                        .filter_map(|f| f.as_str())
                        .filter(|f| f.ends_with(".a"))
                        .map(PathBuf::from),
                );
            }
        }
        if artifacts.is_empty() {
            return Err(self.fail("cargo built nothing to run or link"));
        }
        Ok(artifacts)
    }
}

fn absolute(path: &Path) -> Result<PathBuf, TargetError> {
    path.canonicalize().map_err(|source| TargetError::Io {
        path: path.into(),
        source,
    })
}

/// Flash and RAM of a firmware ELF, by section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FirmwareSize {
    /// Code and constants other than the model: `.vector_table`/`.init`,
    /// `.text`, `.rodata` less the model, `.data`'s initial values.
    pub flash_code: u64,
    /// The embedded model file (in `.rodata`, read in place).
    pub flash_weights: u64,
    /// Statically allocated RAM: `.data`, `.bss`, `.uninit` (the arena
    /// is a static buffer, so it is part of this).
    pub ram_static: u64,
}

/// The sections of the firmware ELF at `elf` embedding a model of `model_bytes`.
pub fn firmware_size(elf: &Path, model_bytes: u64) -> Result<FirmwareSize, TargetError> {
    let data = std::fs::read(elf).map_err(|source| TargetError::Io {
        path: elf.into(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|e| TargetError::Io {
        path: elf.into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut s = FirmwareSize::default();
    let mut rodata = 0;
    for section in file.sections() {
        let name = section.name().unwrap_or("");
        let size = section.size();
        match name {
            ".vector_table" | ".init" | ".text" | ".trap" => s.flash_code += size,
            ".rodata" | ".srodata" => rodata += size,
            ".data" | ".sdata" => {
                s.flash_code += size;
                s.ram_static += size;
            }
            ".bss" | ".sbss" | ".uninit" => s.ram_static += size,
            _ => {}
        }
    }
    s.flash_weights = model_bytes.min(rodata);
    s.flash_code += rodata - s.flash_weights;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firmware_links_the_op_families_its_model_uses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mlp = model_op_families(&root.join("models/demo/fashion_mlp.onnx")).unwrap();
        assert_eq!(mlp, ["op-activation", "op-gemm"]);
        let ds = model_op_families(&root.join("models/students/ds-cnn-kd.int8.onnx")).unwrap();
        for family in ["op-conv", "op-gemm", "op-pool", "op-quant", "op-activation"] {
            assert!(ds.contains(&family), "{family} missing from {ds:?}");
        }
        assert!(!ds.contains(&"quant-u8"), "{ds:?}");
        let err = model_op_families(Path::new("/nonexistent.onnx")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.onnx"), "{err}");
    }

    #[test]
    fn every_target_has_its_crate_and_a_unique_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names = std::collections::HashSet::new();
        for t in TARGETS {
            assert!(names.insert(t.name), "{} listed twice", t.name);
            assert_eq!(find(t.name).unwrap().triple, t.triple);
            let manifest = root.join(t.folder).join("Cargo.toml");
            assert!(manifest.is_file(), "{}: no {}", t.name, manifest.display());
        }
        let err = find("esp32").unwrap_err().to_string();
        assert!(
            err.contains("esp32") && err.contains("tinykd targets"),
            "{err}"
        );
    }

    #[test]
    fn firmware_sizes_split_code_from_the_model() {
        // This test binary is an ELF too: its .rodata is larger than a
        // pretend 1,000-byte model, which moves from code to weights.
        let exe = std::env::current_exe().unwrap();
        let whole = firmware_size(&exe, 0).unwrap();
        let split = firmware_size(&exe, 1000).unwrap();
        assert_eq!(split.flash_weights, 1000);
        assert_eq!(split.flash_code + 1000, whole.flash_code);
        assert!(whole.flash_code > 0 && whole.ram_static > 0, "{whole:?}");
        let err = firmware_size(Path::new("/nonexistent.elf"), 0).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.elf"), "{err}");
    }
}
