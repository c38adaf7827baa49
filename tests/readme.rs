//! The README's configuration table is the one the binary prints from its settings table.

#[test]
fn readme_configuration_table_is_current() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelay"))
        .arg("config-table")
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(table.trim_end()),
        "README.md's configuration table differs from `corelay config-table`:\n{table}"
    );
}
