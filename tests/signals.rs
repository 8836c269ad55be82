//! Signals that race an export's last step: whenever SIGINT or SIGTERM lands, the output is the
//! complete old one (exit 130, or killed before gptc could handle the signal) or the complete
//! new one (exit 0), and nothing is left beside it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const TINY: [&str; 8] =
    ["--emb-dim", "64", "--n-layers", "2", "--n-heads", "4", "--context-length", "64"];
/// A vocabulary other than GPT-2's: no tokenizer files to build, so an export takes tens of
/// milliseconds and many signals fit in a few seconds; the folder is written and swapped in as
/// any other.
const SMALL: &[&str] = &["--vocab-size", "512"];

/// Every file and folder under `path` (a file: itself) with its bytes, links not followed.
fn contents(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut pending = vec![(path.to_path_buf(), String::new())];
    while let Some((at, prefix)) = pending.pop() {
        let meta = std::fs::symlink_metadata(&at).unwrap();
        if !meta.is_dir() {
            all.insert(prefix, std::fs::read(&at).unwrap());
            continue;
        }
        all.insert(format!("{prefix}/"), Vec::new());
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            pending
                .push((entry.path(), format!("{prefix}/{}", entry.file_name().to_string_lossy())));
        }
    }
    all
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn copy_all(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_all(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

fn export_args<'a>(output: &'a str, seed: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["export", "-o", output, "--seed", seed];
    args.extend(TINY);
    args.extend(extra);
    args
}

/// Exports `outputs` (a folder, or a model and its data) over an old export again and again,
/// each time signalled at another moment of the export, and checks what each run left.
fn race(outputs: &[&str], extra: &[&str], trials: usize) {
    let old_dir = tempfile::tempdir().unwrap();
    let new_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = outputs[0];
    for (dir, seed) in [(old_dir.path(), "1"), (new_dir.path(), "2")] {
        common::assert_success(&common::gptc_in(dir, &export_args(output, seed, extra)));
    }
    let snapshot = |dir: &Path| -> Vec<BTreeMap<String, Vec<u8>>> {
        outputs.iter().map(|o| contents(&dir.join(o.trim_end_matches('/')))).collect()
    };
    let (old, new) = (snapshot(old_dir.path()), snapshot(new_dir.path()));
    assert!(old != new, "the two seeds wrote the same model");
    let mut wanted_names: Vec<String> =
        outputs.iter().map(|o| o.trim_end_matches('/').to_string()).collect();
    wanted_names.sort();

    let restore_old = || {
        for o in outputs {
            let path = work.path().join(o.trim_end_matches('/'));
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else if path.exists() {
                std::fs::remove_file(&path).unwrap();
            }
            copy_all(&old_dir.path().join(o.trim_end_matches('/')), &path);
        }
    };
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_gptc"))
            .current_dir(work.path())
            .args(export_args(output, "2", extra))
            .stderr(Stdio::piped())
            .spawn()
            .expect("gptc runs")
    };
    // How long one export takes here: the signals are spread over that time, most of them
    // near its end, where the old output is replaced. The estimate follows the runs (a busy
    // machine makes them slower), so that the signals keep landing on that end.
    restore_old();
    let start = Instant::now();
    assert!(spawn().wait_with_output().unwrap().status.success());
    let mut whole = start.elapsed();

    let (mut old_seen, mut new_seen, mut too_late) = (0, 0, 0);
    for trial in 0..trials {
        restore_old();
        let at = trial as f64 / trials as f64;
        let fraction = if trial % 3 == 0 { 1.1 * at } else { 0.7 + 0.35 * at };
        let signal = if trial % 2 == 0 { libc::SIGINT } else { libc::SIGTERM };
        let mut child = spawn();
        let delay = whole.mul_f64(fraction);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            too_late += 1;
            whole = delay.mul_f64(0.95);
        } else {
            // Not yet waited for, the child's id cannot have been reused.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
        let out = child.wait_with_output().unwrap();
        if out.status.code() == Some(130) && fraction >= 0.95 {
            whole = whole.mul_f64(1.05);
        }
        let found = snapshot(work.path());
        let state = if found == old {
            "old"
        } else if found == new {
            "new"
        } else {
            "neither"
        };
        let how = format!(
            "trial {trial} (signal {signal} at {:.0}% of {whole:?}): exit {:?}, {state} output, stderr {}",
            100.0 * fraction,
            out.status.code(),
            common::stderr(&out)
        );
        assert_eq!(names_in(work.path()), wanted_names, "{how}: something was left beside it");
        match (out.status.code(), state) {
            (Some(130) | None, "old") => old_seen += 1,
            (Some(0), "new") => new_seen += 1,
            _ => panic!("{how}"),
        }
    }
    eprintln!(
        "{outputs:?}: {old_seen} runs stopped with the old output, {new_seen} finished \
         ({too_late} before the signal)"
    );
}

#[test]
fn a_signal_during_a_folder_export_leaves_the_old_folder_or_the_new_one_and_says_which() {
    race(&["model/"], SMALL, 60);
}

#[test]
fn a_signal_during_an_external_data_export_leaves_the_old_pair_or_the_new_one_and_says_which() {
    race(&["m.onnx", "m.onnx.data"], &[SMALL, &["--external-data"]].concat(), 60);
}

/// The pieces the handler relies on, in process: a commit in progress holds the lock the handler
/// takes, a commit into a temporary folder is not an output in place, and removing a temporary
/// folder outlasts a thread still writing into it (as the main thread may be).
#[test]
fn the_commit_lock_orders_commits_and_removal_and_removal_outlasts_a_writer() {
    use gptc_graph::file::{self, Staged};
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join(".out.tmp");
    file::create_temporary_dir(&staging).unwrap();
    let staged_inside = Staged::write(&staging.join("m.onnx"), |out| out.write_all(b"inner"));
    staged_inside.unwrap().commit().unwrap();
    assert_eq!(file::commit_lock().outputs_in_place(), 0, "a staged file is not an output");

    let target = dir.path().join("m.onnx");
    let staged = Staged::write(&target, |out| out.write_all(b"new")).unwrap();
    let (taken, was_taken) = std::sync::mpsc::channel();
    let committer = std::thread::spawn(move || {
        let mut held = file::commit_lock();
        taken.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        staged.commit_under(&mut held).unwrap();
    });
    was_taken.recv().unwrap();
    // Taken while the commit is in progress: granted only once the new file is in place.
    let held = file::commit_lock();
    assert_eq!(held.outputs_in_place(), 1);
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    committer.join().unwrap();
    drop(held);

    for round in 0..40 {
        file::create_temporary_dir(&staging).unwrap();
        let (writing, is_writing) = std::sync::mpsc::channel();
        let writer = {
            let staging = staging.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while std::fs::write(staging.join(format!("f{n}")), b"x").is_ok() {
                    n += 1;
                    if n == 1 {
                        writing.send(()).unwrap();
                    }
                }
            })
        };
        is_writing.recv().unwrap();
        file::remove_temporaries(&file::commit_lock());
        assert!(!staging.exists(), "round {round}: the temporary folder outlived its removal");
        writer.join().unwrap();
    }
    let mut left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["m.onnx"]);
}
