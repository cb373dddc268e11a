//! The importer on real files: keepalived.conf and ipvsadm rules and
//! scripts from public repositories, upstream samples, issue reports and
//! tutorials (tests/import_corpus, with their sources in SOURCES.tsv).
//! Every file is imported to a config pnlb accepts, or refused with the
//! reason for each thing left out; EXPECTED.tsv pins what each one gives
//! (PNLB_UPDATE_CORPUS=1 rewrites it after a deliberate change).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ipvsadm, keepalived, names, Imported, NoteKind};

fn corpus(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import_corpus")
        .join(kind)
}

fn files(kind: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(kind))
        .expect("corpus directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".tsv"))
        })
        .collect();
    files.sort();
    files
}

fn import(kind: &str, path: &Path) -> Imported {
    let text = std::fs::read_to_string(path).expect("corpus file");
    match kind {
        "keepalived" => keepalived::import(&text, Some(path)),
        _ => ipvsadm::import(
            &text,
            &names::System::offline(),
            &path.display().to_string(),
        ),
    }
}

/// One row of EXPECTED.tsv: what a file gives.
fn outcome(imported: &Imported) -> String {
    let count = |kind| imported.notes.iter().filter(|n| n.kind == kind).count();
    format!(
        "{}\t{}\t{}\t{}\t{}",
        imported.services,
        imported.backends,
        count(NoteKind::Skipped),
        count(NoteKind::Approximated),
        count(NoteKind::Outside)
    )
}

fn check_kind(kind: &str) {
    let sources = std::fs::read_to_string(corpus(kind).join("SOURCES.tsv")).expect("SOURCES.tsv");
    let listed: Vec<&str> = sources
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect();
    let expected_path = corpus(kind).join("EXPECTED.tsv");
    let expected_text = std::fs::read_to_string(&expected_path).unwrap_or_default();
    let expected: BTreeMap<&str, &str> = expected_text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .collect();

    let (mut whole, mut partial, mut refused) = (0, 0, 0);
    let mut rows =
        vec!["file\tservices\tbackends\tnot_imported\tchanged\tnot_load_balancing".to_string()];
    let mut mismatches = Vec::new();
    for path in files(kind) {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        assert!(
            listed.contains(&name.as_str()),
            "{name} has no source in SOURCES.tsv"
        );
        let imported = import(kind, &path);
        // The output is always a config pnlb accepts.
        if let Err(err) = pnlb_core::config::parse(Path::new(&name), &imported.toml) {
            panic!(
                "{name}: the import does not pass pnlb check: {err}\n{}",
                imported.toml
            );
        }
        // Everything left out says why.
        for note in &imported.notes {
            assert!(
                note.text.len() > 10,
                "{name}: a note without a reason: {note:?}"
            );
        }
        let skipped = imported.notes.iter().any(|n| n.kind == NoteKind::Skipped);
        match (imported.services, skipped) {
            (0, _) => refused += 1,
            (_, true) => partial += 1,
            (_, false) => whole += 1,
        }
        if imported.services == 0 {
            assert!(skipped, "{name}: nothing imported and no reason given");
        }
        let row = outcome(&imported);
        if expected.get(name.as_str()) != Some(&row.as_str()) {
            mismatches.push(format!(
                "{name}: expected {:?}, got {row:?}\n{}",
                expected.get(name.as_str()),
                imported.summary(&name)
            ));
        }
        println!("--- {kind}/{name}: {}", row.replace('\t', " "));
        print!("{}", imported.summary(&name));
        rows.push(format!("{name}\t{row}"));
    }
    for name in listed {
        assert!(
            corpus(kind).join(name).is_file(),
            "SOURCES.tsv lists {name}, which is not in the corpus"
        );
    }
    println!(
        "== {kind} corpus: {} files: {whole} imported whole (VRRP and global settings aside), {partial} imported with items listed as not imported, {refused} with nothing to import, each for a stated reason",
        whole + partial + refused
    );
    if std::env::var_os("PNLB_UPDATE_CORPUS").is_some() {
        std::fs::write(&expected_path, rows.join("\n") + "\n").expect("write EXPECTED.tsv");
        return;
    }
    assert!(
        mismatches.is_empty(),
        "{} file(s) import differently than EXPECTED.tsv says (rerun with PNLB_UPDATE_CORPUS=1 after a deliberate change):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn every_keepalived_file_of_the_corpus_imports_to_a_valid_config_or_says_why_not() {
    check_kind("keepalived");
}

#[test]
fn every_ipvsadm_file_of_the_corpus_imports_to_a_valid_config_or_says_why_not() {
    check_kind("ipvsadm");
}
