//! A man page that stands alone, for both binaries: clap's sections (name,
//! synopsis, description, options, the text after the help), the
//! subcommands described in the page itself rather than as references to
//! pages that are not shipped, then ENVIRONMENT, FILES and EXIT STATUS.

use std::io::Write;

/// One extra section: its title and its paragraphs (`(tag, text)`: a tagged
/// paragraph, or a plain one when the tag is empty).
pub struct Section<'a> {
    pub title: &'a str,
    pub items: Vec<(String, String)>,
}

/// roff text: a backslash doubled, a leading dot or quote made literal.
fn esc(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Renders the page for `cmd` with `extra` sections at the end.
pub fn render(cmd: clap::Command, extra: &[Section], out: &mut impl Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let subcommands: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subcommands.is_empty() {
        writeln!(out, ".SH COMMANDS")?;
        for sub in subcommands {
            let usage = sub.clone().render_usage().to_string();
            let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage).to_owned();
            writeln!(out, ".TP\n\\fB{} {}\\fR", esc(cmd.get_name()), esc(&usage))?;
            let about = sub
                .get_long_about()
                .or(sub.get_about())
                .map(ToString::to_string)
                .unwrap_or_default();
            writeln!(out, "{}", esc(&about.replace('\n', " ")))?;
        }
    }
    if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        writeln!(out, ".SH NOTES")?;
        for para in after.to_string().split("\n\n") {
            writeln!(out, ".PP\n{}", esc(&para.replace('\n', " ")))?;
        }
    }
    for section in extra {
        writeln!(out, ".SH {}", section.title)?;
        for (tag, text) in &section.items {
            if tag.is_empty() {
                writeln!(out, ".PP\n{}", esc(text))?;
            } else {
                writeln!(out, ".TP\n\\fB{}\\fR\n{}", esc(tag), esc(text))?;
            }
        }
    }
    man.render_version_section(out)?;
    Ok(())
}
