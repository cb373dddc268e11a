//! keepalived.conf's grammar, as keepalived's own parser reads it: blocks
//! of keywords delimited by `{` `}` (a block's `{` may open on the next
//! line), comments from `#` or `!` to the end of a line outside quotes,
//! `$NAME=value` parameters substituted as `$NAME` or `${NAME}`, lines
//! conditional on the config id (`@id` / `@^id`), and `include FILE`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::super::model::Notes;

/// One keyword with its arguments, and the block that follows it, if any.
#[derive(Debug, Clone)]
pub struct Statement {
    pub words: Vec<String>,
    /// Line in the file given to the import (for included files, the line
    /// of the `include`).
    pub line: usize,
    pub block: Option<Vec<Statement>>,
}

impl Statement {
    pub fn keyword(&self) -> &str {
        self.words.first().map(String::as_str).unwrap_or("")
    }

    pub fn arg(&self, index: usize) -> Option<&str> {
        self.words.get(index).map(String::as_str)
    }

    pub fn children(&self) -> &[Statement] {
        self.block.as_deref().unwrap_or(&[])
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    EndOfLine,
}

/// Reads the file's statements. `dir` is where relative `include`s are
/// looked for; without it (standard input) they are listed as not read.
pub fn parse(text: &str, dir: Option<&Path>, notes: &mut Notes) -> Vec<Statement> {
    let mut lexer = Lexer {
        params: HashMap::new(),
        notes,
        skipped_ids: Vec::new(),
        depth: 0,
    };
    let mut tokens = Vec::new();
    lexer.lex(text, dir, None, &mut tokens);
    let mut at = 0;
    let statements = build(&tokens, &mut at, lexer.notes, 0);
    if at < tokens.len() {
        // Only an unbalanced `}` at the top stops `build` early.
        let line = tokens[at].1;
        lexer.notes.skipped(
            line,
            "a `}` closes no block; the rest of the file is not read (keepalived stops there too)",
        );
    }
    statements
}

struct Lexer<'a> {
    params: HashMap<String, String>,
    notes: &'a mut Notes,
    skipped_ids: Vec<String>,
    depth: usize,
}

impl Lexer<'_> {
    /// `include_line`: the line of the `include` in the top file, for
    /// tokens read from an included file.
    fn lex(
        &mut self,
        text: &str,
        dir: Option<&Path>,
        include_line: Option<usize>,
        out: &mut Vec<(Token, usize)>,
    ) {
        let mut lines = text.lines().enumerate().peekable();
        while let Some((index, raw)) = lines.next() {
            let line = include_line.unwrap_or(index + 1);
            let mut content = raw.trim_start().to_string();

            // Conditional configuration: `@id rest` is for config id `id`
            // only, `@^id rest` for every other. pnlb has no config id, so
            // the first are left out and the second kept.
            if let Some(rest) = content.strip_prefix('@') {
                let (negated, rest) = match rest.strip_prefix('^') {
                    Some(rest) => (true, rest),
                    None => (false, rest),
                };
                let (id, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                if negated {
                    content = rest.trim_start().to_string();
                } else {
                    if !self.skipped_ids.iter().any(|s| s == id) {
                        self.skipped_ids.push(id.to_string());
                        self.notes.skipped(
                            line,
                            format!("lines for config id {id:?} (`@{id}`): keepalived reads them only when run with `-i {id}`; edit the result for that node"),
                        );
                    }
                    continue;
                }
            }

            // Parameter definitions, possibly continued with `\`.
            if let Some((name, value)) = parameter_definition(&content) {
                let mut value = value.to_string();
                while value.ends_with('\\') {
                    value.pop();
                    match lines.next() {
                        Some((_, next)) => {
                            value.push('\n');
                            value.push_str(next.trim());
                        }
                        None => break,
                    }
                }
                self.params.insert(name.to_string(), value);
                continue;
            }

            let expanded = self.substitute(&content);
            for sub_line in expanded.split('\n') {
                let words = split_line(sub_line);
                if words.first().map(String::as_str) == Some("include") {
                    self.include(&words, dir, line, out);
                    continue;
                }
                for word in words {
                    let token = match word.as_str() {
                        "{" => Token::Open,
                        "}" => Token::Close,
                        _ => Token::Word(word),
                    };
                    out.push((token, line));
                }
                out.push((Token::EndOfLine, line));
            }
        }
    }

    fn include(
        &mut self,
        words: &[String],
        dir: Option<&Path>,
        line: usize,
        out: &mut Vec<(Token, usize)>,
    ) {
        let Some(pattern) = words.get(1) else {
            self.notes.skipped(line, "`include` without a file name");
            return;
        };
        let Some(dir) = dir else {
            self.notes.skipped(
                line,
                format!("include {pattern}: not read (the config came from standard input; give the file's path)"),
            );
            return;
        };
        if self.depth >= 8 {
            self.notes.skipped(
                line,
                format!("include {pattern}: includes nested deeper than 8 are not read"),
            );
            return;
        }
        let files = expand_include(dir, pattern);
        if files.is_empty() {
            self.notes
                .skipped(line, format!("include {pattern}: no such file"));
        }
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    self.depth += 1;
                    let inner_dir = file.parent().map(Path::to_path_buf);
                    self.lex(&text, inner_dir.as_deref(), Some(line), out);
                    self.depth -= 1;
                }
                Err(err) => self
                    .notes
                    .skipped(line, format!("include {}: {err}", file.display())),
            }
        }
    }

    /// `$NAME` (followed by whitespace or the end) and `${NAME}`, replaced
    /// recursively; undefined parameters stay as written.
    fn substitute(&self, text: &str) -> String {
        if self.params.is_empty() {
            return text.to_string();
        }
        let mut current = text.to_string();
        for _ in 0..16 {
            let next = self.substitute_once(&current);
            // A parameter that contains itself grows without end.
            if next == current || next.len() > 65_536 {
                break;
            }
            current = next;
        }
        current
    }

    fn substitute_once(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(braced) = after.strip_prefix('{') {
                if let Some(end) = braced.find('}') {
                    if let Some(value) = self.params.get(&braced[..end]) {
                        out.push_str(value);
                        rest = &braced[end + 1..];
                        continue;
                    }
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                let followed_by_space = after[end..].chars().next().is_none_or(char::is_whitespace);
                if let (Some(value), true) = (self.params.get(&after[..end]), followed_by_space) {
                    out.push_str(value);
                    rest = &after[end..];
                    continue;
                }
            }
            out.push('$');
            rest = after;
        }
        out.push_str(rest);
        out
    }
}

/// `$NAME=value` with nothing but whitespace before the `$`.
fn parameter_definition(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('$')?;
    let (name, value) = rest.split_once('=')?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some((name, value.trim()))
}

/// Words of one line: comments dropped, `{` and `}` on their own, quoted
/// strings kept whole (without their quotes).
fn split_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = line.chars();
    let mut in_quotes = false;
    let mut quoted = false;
    let flush = |current: &mut String, quoted: &mut bool, words: &mut Vec<String>| {
        if !current.is_empty() || *quoted {
            words.push(std::mem::take(current));
        }
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' => in_quotes = false,
                '\\' => {
                    if let Some(next) = chars.next() {
                        current.push(next);
                    }
                }
                _ => current.push(c),
            }
            continue;
        }
        match c {
            '#' | '!' => break,
            '"' => {
                in_quotes = true;
                quoted = true;
            }
            '{' | '}' => {
                flush(&mut current, &mut quoted, &mut words);
                words.push(c.to_string());
            }
            c if c.is_whitespace() => flush(&mut current, &mut quoted, &mut words),
            _ => current.push(c),
        }
    }
    flush(&mut current, &mut quoted, &mut words);
    words
}

/// The files an `include` names: a path relative to the including file's
/// directory, with `*` and `?` wildcards in its last component.
fn expand_include(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let path = dir.join(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains(['*', '?']) {
        return if path.is_file() {
            vec![path]
        } else {
            Vec::new()
        };
    }
    let parent = path.parent().unwrap_or(dir);
    let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|candidate| wildcard_match(name.as_bytes(), candidate.as_bytes()))
        })
        .map(|entry| entry.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&pattern[1..], text)
                || (!text.is_empty() && wildcard_match(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => wildcard_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// Statements up to the `}` that closes this level (or the end).
fn build(
    tokens: &[(Token, usize)],
    at: &mut usize,
    notes: &mut Notes,
    depth: usize,
) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut line = 0;
    // The last statement ended with its line, so a `{` on the next line
    // opens its block (keepalived allows a checker's `{` there).
    let mut last_open_to_block = false;
    while *at < tokens.len() {
        let (token, token_line) = &tokens[*at];
        match token {
            Token::Word(word) => {
                if words.is_empty() {
                    line = *token_line;
                }
                words.push(word.clone());
                *at += 1;
            }
            Token::EndOfLine => {
                *at += 1;
                if !words.is_empty() {
                    out.push(Statement {
                        words: std::mem::take(&mut words),
                        line,
                        block: None,
                    });
                    last_open_to_block = true;
                }
            }
            Token::Open => {
                *at += 1;
                let children = build(tokens, at, notes, depth + 1);
                if words.is_empty() {
                    match out.last_mut() {
                        Some(previous) if last_open_to_block && previous.block.is_none() => {
                            previous.block = Some(children);
                        }
                        _ => {
                            notes.skipped(
                                *token_line,
                                "a block without a keyword before its `{` (keepalived ignores it)",
                            );
                        }
                    }
                } else {
                    out.push(Statement {
                        words: std::mem::take(&mut words),
                        line,
                        block: Some(children),
                    });
                }
                last_open_to_block = false;
            }
            Token::Close => {
                if depth == 0 {
                    break;
                }
                *at += 1;
                if !words.is_empty() {
                    out.push(Statement {
                        words: std::mem::take(&mut words),
                        line,
                        block: None,
                    });
                }
                return out;
            }
        }
    }
    if !words.is_empty() {
        out.push(Statement {
            words,
            line,
            block: None,
        });
    }
    if depth > 0 && *at >= tokens.len() {
        let line = tokens.last().map_or(0, |t| t.1);
        notes.skipped(
            line,
            "a block is not closed before the end of the file (keepalived closes it there)",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(text: &str) -> (Vec<Statement>, Vec<String>) {
        let mut notes = Notes::default();
        let parsed = parse(text, None, &mut notes);
        (parsed, notes.0.into_iter().map(|n| n.text).collect())
    }

    #[test]
    fn a_block_may_open_on_the_next_line_and_comments_end_anywhere() {
        let (parsed, notes) = statements(
            "real_server 10.0.0.1 80   # web\n{\n  HTTP_GET\n  {\n    url { path /health ! probe\n    }\n  }\n}\n",
        );
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(parsed.len(), 1);
        let check = &parsed[0].children()[0];
        assert_eq!(check.keyword(), "HTTP_GET");
        assert_eq!(check.children()[0].children()[0].words, ["path", "/health"]);
    }

    #[test]
    fn quotes_keep_spaces_and_comment_characters() {
        let (parsed, _) = statements("misc_path \"/bin/check --x=!a #b\" # comment\n");
        assert_eq!(parsed[0].words, ["misc_path", "/bin/check --x=!a #b"]);
    }

    #[test]
    fn parameters_are_substituted_and_conditional_lines_follow_the_config_id() {
        let (parsed, notes) = statements(
            "$VIP=10.0.0.5\n$PORT=80\nvirtual_server $VIP ${PORT} {\n@main weight 5\n@^main weight 7\n}\n",
        );
        assert_eq!(parsed[0].words, ["virtual_server", "10.0.0.5", "80"]);
        assert_eq!(parsed[0].children()[0].words, ["weight", "7"]);
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn unbalanced_braces_are_reported_not_fatal() {
        let (_, notes) = statements("virtual_server 1.2.3.4 80 {\n real_server 1.2.3.5 80 {\n");
        assert!(notes[0].contains("not closed"), "{notes:?}");
        let (_, notes) = statements("}\nvirtual_server 1.2.3.4 80 { }\n");
        assert!(notes[0].contains("closes no block"), "{notes:?}");
        for junk in [
            "{", "}}}", "{ { } ", "$=", "$A=$A$A", "@", "@^", "include", "\"open",
        ] {
            let _ = statements(junk);
        }
    }

    #[test]
    fn wildcards_match_like_glob() {
        assert!(wildcard_match(b"*.conf", b"web.conf"));
        assert!(!wildcard_match(b"*.conf", b"web.conf.bak"));
        assert!(wildcard_match(b"vs-?.conf", b"vs-1.conf"));
    }
}
