//! The guides stay true and in step: every command of the English quick start is in the
//! Chinese one, every lesson page has its Chinese counterpart and its test, and the code
//! each page quotes is at the lines it links to.

// Test code: a panic is how a check reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The text under the level-2 heading that starts with `heading`, up to the next level-2
/// (or level-1) heading. Fenced blocks are skipped when looking for the end, so a `#`
/// comment line in a code block does not end the section.
fn section<'a>(markdown: &'a str, heading: &str) -> Option<&'a str> {
    let mut start = None;
    let mut offset = 0;
    let mut in_fence = false;
    for line in markdown.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && (trimmed.starts_with("## ") || trimmed.starts_with("# ")) {
            if let Some(begin) = start {
                return Some(&markdown[begin..offset]);
            }
            if trimmed
                .strip_prefix("## ")
                .is_some_and(|title| title.trim().starts_with(heading))
            {
                start = Some(offset + line.len());
            }
        }
        offset += line.len();
    }
    start.map(|begin| &markdown[begin..])
}

/// The shell commands in the fenced `sh`/`bash`/`shell`/`console` blocks of `markdown`,
/// one per command, normalised: continuation lines joined, a `$ ` prompt and trailing
/// `# comments` removed, runs of blanks made one space.
fn shell_commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut shell_block = None::<bool>;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            shell_block = match shell_block {
                Some(_) => None,
                None => Some(matches!(
                    info.split_whitespace().next().unwrap_or(""),
                    "sh" | "bash" | "shell" | "console" | "zsh"
                )),
            };
            pending.clear();
            continue;
        }
        if shell_block != Some(true) {
            continue;
        }
        let code = strip_comment(trimmed.strip_prefix("$ ").unwrap_or(trimmed));
        match code.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(code);
                let command = pending.split_whitespace().collect::<Vec<_>>().join(" ");
                if !command.is_empty() {
                    commands.push(command);
                }
                pending.clear();
            }
        }
    }
    commands
}

/// `line` without a `#` comment: a `#` that starts a word, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (index, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(open), _) if c == open => quote = None,
            (None, '#') if previous.is_whitespace() => return line[..index].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
}

#[test]
fn the_command_extractor_reads_what_a_shell_would_run() {
    let markdown = "text\n```sh\nscripts/stack demo     # starts it all\n\
        curl -s -X POST x \\\n     -H 'a: #b' \\\n     -d '{}'\n\n$ echo done\n```\n\
        ```\nnot a command\n```\n```rust\nlet x = 1;\n```\n";
    assert_eq!(
        shell_commands(markdown),
        [
            "scripts/stack demo",
            "curl -s -X POST x -H 'a: #b' -d '{}'",
            "echo done"
        ]
    );
    let readme = "# T\n## Quick start\n```sh\n# a comment\nrun\n```\n## Next\nlater\n";
    assert_eq!(
        section(readme, "Quick start"),
        Some("```sh\n# a comment\nrun\n```\n")
    );
    assert_eq!(section(readme, "Missing"), None);
}

const ENGLISH_QUICK_START: &str = "Quick start";
const CHINESE_QUICK_START: &str = "快速开始";

#[test]
fn every_command_of_the_english_quick_start_is_in_the_chinese_one() {
    let english = read(&root().join("README.md"));
    let chinese = read(&root().join("README.zh-CN.md"));
    let english = section(&english, ENGLISH_QUICK_START)
        .unwrap_or_else(|| panic!("README.md has no \"## {ENGLISH_QUICK_START}\" section"));
    let chinese = section(&chinese, CHINESE_QUICK_START)
        .unwrap_or_else(|| panic!("README.zh-CN.md has no \"## {CHINESE_QUICK_START}\" section"));
    let wanted = shell_commands(english);
    assert!(
        !wanted.is_empty(),
        "no shell command found in README.md's quick start: its blocks should be ```sh"
    );
    let present = shell_commands(chinese);
    let missing: Vec<&String> = wanted.iter().filter(|c| !present.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "README.zh-CN.md's \"{CHINESE_QUICK_START}\" lacks {} command(s) of README.md's quick start \
         (add each, exactly as written, in a ```sh block):\n{}",
        missing.len(),
        missing
            .iter()
            .map(|c| format!("    {c}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `docs/lessons/NN-name.md`, in order.
fn lesson_pages(dir: &Path) -> Vec<String> {
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.ends_with(".md") && name.len() > 3 && name[..2].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    pages.sort();
    pages
}

#[test]
fn every_lesson_page_has_its_chinese_page_and_its_test_and_the_readme_links_them() {
    let lessons = root().join("docs/lessons");
    let english = lesson_pages(&lessons);
    let chinese = lesson_pages(&lessons.join("zh"));
    assert!(english.len() >= 7, "lesson pages: {english:?}");
    assert_eq!(
        english, chinese,
        "docs/lessons/ and docs/lessons/zh/ should hold the same pages"
    );
    let readme = read(&root().join("README.md"));
    let readme_zh = read(&root().join("README.zh-CN.md"));
    for page in &english {
        let number = &page[..2];
        let test = format!("tests/lessons/tests/lesson{number}_");
        let test_file = std::fs::read_dir(root().join("tests/lessons/tests"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|name| name.starts_with(&format!("lesson{number}_")))
            .unwrap_or_else(|| {
                panic!("no test tests/lessons/tests/lesson{number}_*.rs for {page}")
            });
        for (text, name) in [
            (read(&lessons.join(page)), format!("docs/lessons/{page}")),
            (
                read(&lessons.join("zh").join(page)),
                format!("docs/lessons/zh/{page}"),
            ),
        ] {
            assert!(
                text.contains(&test_file),
                "{name} does not name its test {test_file}"
            );
        }
        assert!(
            readme.contains(&format!("docs/lessons/{page}")) && readme.contains(&test),
            "README.md should link docs/lessons/{page} and its test {test}*"
        );
        assert!(
            readme_zh.contains(&format!("docs/lessons/zh/{page}")),
            "README.zh-CN.md should link docs/lessons/zh/{page}"
        );
    }
}

/// A link to lines of a file: `](../../path/to/file.rs#L10-L20)`.
#[derive(Debug)]
struct LineLink {
    target: String,
    first: usize,
    last: usize,
    /// Where the link ends in the page, to find the excerpt that follows it.
    end: usize,
}

fn line_links(page: &str) -> Vec<LineLink> {
    let mut links = Vec::new();
    let mut rest = page;
    let mut offset = 0;
    while let Some(open) = rest.find("](") {
        let after = &rest[open + 2..];
        let Some(close) = after.find(')') else { break };
        let target = &after[..close];
        if let Some((path, lines)) = target.split_once("#L") {
            let (first, last) = lines.split_once("-L").unwrap_or((lines, lines));
            if let (Ok(first), Ok(last)) = (first.parse(), last.parse()) {
                links.push(LineLink {
                    target: path.to_owned(),
                    first,
                    last,
                    end: offset + open + 2 + close + 1,
                });
            }
        }
        offset += open + 2 + close + 1;
        rest = &page[offset..];
    }
    links
}

/// The fenced block that follows `from` in `page` when only blank lines or one line of
/// text stand between them (the link's own line): the excerpt the link points at.
fn excerpt_after(page: &str, from: usize) -> Option<Vec<&str>> {
    let rest = &page[from..];
    let mut lines = rest.lines();
    // The rest of the link's own line.
    lines.next()?;
    let mut line = lines.next()?;
    while line.trim().is_empty() {
        line = lines.next()?;
    }
    if !line.trim_start().starts_with("```") {
        return None;
    }
    Some(
        lines
            .take_while(|l| !l.trim_start().starts_with("```"))
            .collect(),
    )
}

#[test]
fn the_code_each_lesson_page_quotes_is_at_the_lines_it_links_to() {
    let lessons = root().join("docs/lessons");
    let mut pages: Vec<PathBuf> = lesson_pages(&lessons)
        .into_iter()
        .map(|p| lessons.join(p))
        .collect();
    pages.extend(
        lesson_pages(&lessons.join("zh"))
            .into_iter()
            .map(|p| lessons.join("zh").join(p)),
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    for page_path in &pages {
        let page = read(page_path);
        let name = page_path
            .strip_prefix(root())
            .unwrap_or(page_path)
            .display()
            .to_string();
        let links = line_links(&page);
        if links.is_empty() {
            problems.push(format!("{name}: no link to lines of this project's code"));
        }
        for link in links {
            let file = page_path.parent().unwrap().join(&link.target);
            let Ok(source) = std::fs::read_to_string(&file) else {
                problems.push(format!("{name}: {} does not exist", link.target));
                continue;
            };
            let source: Vec<&str> = source.lines().collect();
            if link.first == 0 || link.first > link.last || link.last > source.len() {
                problems.push(format!(
                    "{name}: {}#L{}-L{} is outside the file ({} lines)",
                    link.target,
                    link.first,
                    link.last,
                    source.len()
                ));
                continue;
            }
            let Some(excerpt) = excerpt_after(&page, link.end) else {
                continue;
            };
            // Each quoted line, in order, within the linked lines; `…` marks a cut.
            let window = &source[link.first - 1..link.last];
            let mut at = 0;
            for quoted in excerpt.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
                if quoted == "…" || quoted == "// …" {
                    continue;
                }
                match window[at..].iter().position(|l| l.trim() == quoted) {
                    Some(found) => at += found + 1,
                    None => {
                        let elsewhere = source
                            .iter()
                            .position(|l| l.trim() == quoted)
                            .map_or("nowhere in the file".to_owned(), |i| {
                                format!("at line {}", i + 1)
                            });
                        problems.push(format!(
                            "{name}: `{quoted}` is not in {}#L{}-L{} (in that order); it is {elsewhere}",
                            link.target, link.first, link.last
                        ));
                        break;
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked >= pages.len(),
        "only {checked} excerpts checked in {} pages",
        pages.len()
    );
}
