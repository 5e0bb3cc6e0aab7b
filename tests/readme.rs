//! The README's examples run as written: every `$ udit ...` line of its code blocks (with
//! `\` continuations) runs from the repository root and prints the lines the README shows
//! under it (timings of `bench` compared with their digits masked).

use std::path::Path;

/// (command arguments, expected output lines) of every `$ udit` example.
fn examples(readme: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let Some(cmd) = line.strip_prefix("$ udit ").filter(|_| in_block) else { continue };
        let mut cmd = cmd.to_string();
        while cmd.ends_with('\\') {
            cmd.pop();
            cmd.push(' ');
            cmd.push_str(lines.next().expect("continued line").trim());
        }
        let mut expected = Vec::new();
        while let Some(next) = lines.peek() {
            if next.starts_with("```") || next.starts_with("$ ") {
                break;
            }
            expected.push(lines.next().unwrap().trim_end().to_string());
        }
        out.push((cmd.split_whitespace().map(String::from).collect(), expected));
    }
    out
}

/// Every run of digits as one `#`.
fn mask_digits(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

#[test]
fn every_udit_example_of_the_readme_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let examples = examples(&readme);
    assert!(examples.len() >= 5, "found only {} examples", examples.len());
    let dir = tempfile::tempdir().unwrap();
    // The examples name repository paths (tests/fixtures/...) and write into the current
    // directory: run them in a scratch folder that links to those paths.
    for sub in ["tests", "assets", "configs"] {
        std::os::unix::fs::symlink(root.join(sub), dir.path().join(sub)).unwrap();
    }
    for (args, expected) in examples {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_udit")).args(&args).current_dir(dir.path()).output();
        let out = out.unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "udit {}: {stderr}", args.join(" "));
        if args[0] == "bench" {
            // Timings vary (digits masked); its progress lines go to stderr.
            let got: Vec<String> = stdout.lines().map(mask_digits).collect();
            let want: Vec<String> = expected.iter().map(|l| mask_digits(l)).collect();
            assert_eq!(got, want, "udit {}", args.join(" "));
        } else {
            let got: Vec<String> = format!("{stdout}{stderr}").lines().map(|l| l.trim_end().to_string()).collect();
            assert_eq!(got, expected, "udit {}", args.join(" "));
        }
    }
}
