//! `bankctl shell`: an interactive `cmd > ` prompt (rustyline, history in memory)
//! taking the control-plane verbs, `help [command]` and `exit` (or Ctrl-D).
//!
//! A line is split as a POSIX shell splits it (`shell-words`), so quoted JSON stays
//! one argument, then parsed by the same clap definitions as `bankctl <verb>`. A
//! failing command prints its one-line error on stderr and the prompt comes back.

use crate::verbs::{self, Verb};
use clap::{CommandFactory, Parser, Subcommand};
use rustyline::error::ReadlineError;

pub const PROMPT: &str = "cmd > ";

/// One line of the shell.
#[derive(Debug, Parser)]
#[command(name = "cmd", disable_help_subcommand = true, disable_help_flag = true, no_binary_name = true)]
struct Line {
    #[command(subcommand)]
    command: ShellCommand,
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum ShellCommand {
    #[command(flatten)]
    Verb(Verb),
    /// List the commands, or explain one.
    #[command(long_about = "List the commands with their usage, or explain one.\n\nExample: help send")]
    Help {
        #[arg(value_name = "command")]
        command: Option<String>,
    },
    /// Leave the shell (Ctrl-D too).
    Exit,
}

/// What a line asks for: nothing (a blank line), a command, or an error to print.
pub fn parse_line(line: &str) -> Result<Option<ShellCommand>, String> {
    let words = shell_words::split(line).map_err(|e| format!("cannot split the line: {e}"))?;
    if words.is_empty() {
        return Ok(None);
    }
    // `send --help` reads as `help send`
    if words.iter().skip(1).any(|w| w == "--help" || w == "-h") {
        return Ok(Some(ShellCommand::Help { command: words.first().cloned() }));
    }
    Line::try_parse_from(&words).map(|l| Some(l.command)).map_err(|e| one_line(&e.render().to_string()))
}

/// clap's several-line error as one line, without its hints meant for a command
/// line (`For more information…`, `Usage: cmd <COMMAND>`).
fn one_line(text: &str) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information") && !l.contains("<COMMAND>"))
        .map(|l| match l.strip_prefix("Usage: ") {
            Some(usage) => format!("; usage: {usage}"),
            None => format!(" {l}"),
        })
        .collect();
    let text = lines.concat().replace("unrecognized subcommand", "unknown command");
    format!("{} (try: help)", text.trim().trim_start_matches("error: "))
}

/// The shell's commands, as clap knows them.
fn commands() -> clap::Command {
    let mut command = Line::command();
    command.build();
    command
}

/// One command's usage: `send <event> <source> [data] [--partition-key <key>] …`,
/// or with `[options]` for the options when `brief`.
fn usage(command: &clap::Command, brief: bool) -> String {
    let mut parts = vec![command.get_name().to_owned()];
    let mut options = false;
    for arg in command.get_arguments().filter(|a| !a.is_hide_set() && a.get_id() != "help") {
        let name =
            arg.get_value_names().and_then(|v| v.first()).map_or_else(|| arg.get_id().to_string(), |v| v.to_string());
        match (arg.get_long(), arg.is_required_set()) {
            (Some(_), _) if brief => options = true,
            (Some(long), _) => parts.push(format!("[--{long} <{name}>]")),
            (None, true) => parts.push(format!("<{name}>")),
            (None, false) => parts.push(format!("[{name}]")),
        }
    }
    if options {
        parts.push("[options]".into());
    }
    parts.join(" ")
}

/// `help`: every command with its usage and what it does; `help <command>`: that
/// command's usage, long description and arguments.
pub fn help(command: Option<&str>) -> Result<String, String> {
    let commands = commands();
    match command {
        None => {
            let mut text = String::from("Commands (output is JSON; `help <command>` explains one):\n");
            let rows: Vec<(String, String)> = commands
                .get_subcommands()
                .map(|c| (usage(c, true), c.get_about().map(|a| a.to_string()).unwrap_or_default()))
                .collect();
            let width = rows.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
            for (usage, about) in rows {
                text.push_str(&format!("  {usage:<width$}  {about}\n"));
            }
            Ok(text)
        }
        Some(name) => {
            let command =
                commands.find_subcommand(name).ok_or_else(|| format!("no such command: {name} (try: help)"))?;
            let mut text = format!("usage: {}\n\n", usage(command, false));
            let about = command.get_long_about().or(command.get_about()).map(|a| a.to_string()).unwrap_or_default();
            text.push_str(&about);
            text.push('\n');
            let args: Vec<_> =
                command.get_arguments().filter(|a| a.get_id() != "help" && a.get_help().is_some()).collect();
            if !args.is_empty() {
                text.push('\n');
                for arg in args {
                    let name =
                        arg.get_value_names().and_then(|v| v.first()).map_or_else(String::new, |v| v.to_string());
                    let label = match arg.get_long() {
                        Some(long) => format!("--{long} <{name}>"),
                        None => name,
                    };
                    let default =
                        arg.get_default_values().first().map(|d| format!(" [default: {}]", d.to_string_lossy()));
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    text.push_str(&format!("  {label:<22} {help}{}\n", default.unwrap_or_default()));
                }
            }
            Ok(text)
        }
    }
}

/// Runs the prompt until `exit` or Ctrl-D; Ctrl-C drops the line being typed.
pub async fn run() -> anyhow::Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    loop {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        if !line.trim().is_empty() {
            editor.add_history_entry(line.as_str())?;
        }
        match parse_line(&line) {
            Ok(None) => {}
            Ok(Some(ShellCommand::Exit)) => break,
            Ok(Some(ShellCommand::Help { command })) => match help(command.as_deref()) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("error: {e}"),
            },
            Ok(Some(ShellCommand::Verb(verb))) => {
                let done = match verbs::client_from_env() {
                    Ok(bus) => verbs::run(&bus, verb).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    eprintln!("error: {e:#}");
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_json_stays_one_argument() -> Result<(), String> {
        let words = shell_words::split(r#"send ViewPage TheSource '{"name":"Sally"}'"#).map_err(|e| e.to_string())?;
        assert_eq!(words, ["send", "ViewPage", "TheSource", r#"{"name":"Sally"}"#]);
        let expected = |data: &str| {
            Some(ShellCommand::Verb(Verb::Send {
                event: "ViewPage".into(),
                source: "TheSource".into(),
                data: Some(data.into()),
                partition_key: None,
                event_id: None,
                tags: vec![],
            }))
        };
        assert_eq!(parse_line(r#"send ViewPage TheSource '{"name":"Sally"}'"#)?, expected(r#"{"name":"Sally"}"#));
        assert_eq!(
            parse_line(r#"  send ViewPage TheSource "{\"name\": \"Sally O'Neil\"}"  "#)?,
            expected(r#"{"name": "Sally O'Neil"}"#)
        );
        Ok(())
    }

    #[test]
    fn blank_lines_exit_help_and_errors() -> Result<(), String> {
        assert_eq!(parse_line("")?, None);
        assert_eq!(parse_line("   ")?, None);
        assert_eq!(parse_line("exit")?, Some(ShellCommand::Exit));
        assert_eq!(parse_line("help")?, Some(ShellCommand::Help { command: None }));
        assert_eq!(parse_line("help send")?, Some(ShellCommand::Help { command: Some("send".into()) }));
        assert_eq!(parse_line("send --help")?, Some(ShellCommand::Help { command: Some("send".into()) }));
        assert_eq!(parse_line("listsubs r1")?, Some(ShellCommand::Verb(Verb::Listsubs { river: "r1".into() })));

        let unbalanced = parse_line(r#"send A B '{"x":1}"#).err().ok_or("an unbalanced quote split")?;
        assert!(unbalanced.starts_with("cannot split the line"), "{unbalanced}");
        for line in ["subscribe r1", "frobnicate", "readfrom r1 --max 0", "token --sub a", "shell"] {
            let error = parse_line(line).err().ok_or(format!("{line} parsed"))?;
            assert!(!error.contains('\n') && error.ends_with("(try: help)"), "{line}: {error}");
        }
        assert_eq!(parse_line("frobnicate"), Err("unknown command 'frobnicate' (try: help)".into()));
        let missing = "the following required arguments were not provided: <topic>; usage: subscribe <river> <topic>";
        assert_eq!(parse_line("subscribe r1"), Err(format!("{missing} (try: help)")));
        Ok(())
    }

    #[test]
    fn help_names_every_verb_and_explains_one() -> Result<(), String> {
        let text = help(None)?;
        let verbs = [
            "send",
            "subscribe",
            "unsubscribe",
            "listsubs",
            "topics",
            "advertise",
            "readfrom",
            "stuck",
            "help",
            "exit",
        ];
        for verb in verbs {
            let listed = text.lines().any(|l| l.split_whitespace().next() == Some(verb));
            assert!(listed, "{verb} missing from\n{text}");
        }
        // nothing clap knows is left out, nothing else is listed
        assert_eq!(commands().get_subcommands().count(), verbs.len());
        assert!(text.contains("send <event> <source> [data]"), "{text}");
        assert!(text.contains("subscribe <river> <topic>"), "{text}");
        assert!(text.contains("readfrom <river> [options]"), "{text}");
        assert!(text.contains("help [command]"), "{text}");
        assert!(text.contains("stuck [options]"), "{text}");

        let send = help(Some("send"))?;
        assert!(send.starts_with("usage: send <event> <source> [data]"), "{send}");
        assert!(send.contains(r#"send ViewPage TheSource '{"name":"Sally"}'"#), "{send}");
        assert!(send.contains("JSON object"), "{send}");
        let readfrom = help(Some("readfrom"))?;
        assert!(readfrom.contains("[default: 3000]") && readfrom.contains("[default: 10]"), "{readfrom}");
        let stuck = help(Some("stuck"))?;
        assert!(stuck.contains("--older-than <secs>") && stuck.contains("[default: 60]"), "{stuck}");
        assert_eq!(help(Some("nope")), Err("no such command: nope (try: help)".into()));
        Ok(())
    }
}
