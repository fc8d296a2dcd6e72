//! The README's embedding snippet and `core/examples/embed.rs` are the same
//! code (the README block also runs as a doctest of moe-core).

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)).unwrap()
}

#[test]
fn embed_example_is_the_readme_snippet() {
    let readme = read("README.md");
    let section = &readme[readme
        .find("## Using the core in your program")
        .expect("README section")..];
    let start = section.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let snippet = &section[start..start + section[start..].find("```\n").unwrap()];
    let example = read("core/examples/embed.rs");
    let code = &example[example.find("\nuse moe_core").expect("example code") + 1..];
    assert_eq!(
        snippet, code,
        "README.md and core/examples/embed.rs differ: update both"
    );
}
