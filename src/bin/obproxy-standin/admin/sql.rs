//! The statements `root@proxysys` sends, read the way obproxy's lexer and grammar read the ones the stand-in answers (v4.3.1:src/obproxy/opsql/parser/ob_proxy_parser.l and .y); everything else is sorted into the classes obproxy answers alike.

/// A value after `=` in `ALTER proxyconfig SET`: an integer is printed back with `%ld`
/// (`OBPROXY_T_SUB_CONFIG_INT_VAULE`, v4.3.1:src/obproxy/cmd/ob_alter_config_handler.cpp:47-57).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
    /// `SET name =` with nothing after it.
    Empty,
}

impl Value {
    pub fn text(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Text(s) => s.clone(),
            Value::Empty => String::new(),
        }
    }
}

/// Which items `SHOW PROXYCONFIG` lists (`opt_like` and its sub-types, ob_proxy_parser.y:1041-1046).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    All,
    /// Only items whose value differs from the default.
    Diff,
    /// As `Diff`, only items visible to users.
    DiffUser,
    /// `SHOW PROXYCONFIG ALL`: the multi-level `proxy_config` table, not modelled.
    Levels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `ALTER proxyconfig SET name = value` (ob_proxy_parser.y:1149-1152).
    Alter { name: String, value: Value },
    ShowConfig {
        listing: Listing,
        like: Option<String>,
    },
    /// `SHOW PROXYINFO BINARY|UPGRADE|IDC` (ob_proxy_parser.y:1141-1146).
    ShowInfo(String),
    /// `PING PROXY`.
    Ping,
    /// A SELECT without a table: obproxy answers three session variables and nothing else
    /// (v4.3.1:src/obproxy/cmd/ob_dds_config_handler.cpp:199-238).
    Select(String),
    /// SET, BEGIN/START TRANSACTION, COMMIT, ROLLBACK: answered with OK
    /// (v4.3.1:src/obproxy/proxy/mysqllib/ob_mysql_request_analyzer.cpp:861-881,
    /// v4.3.1:src/obproxy/cmd/ob_dds_config_handler.cpp:165-184).
    RespondOk,
    /// Any other SHOW: obproxy lists its fixed session variables
    /// (v4.3.1:src/obproxy/cmd/ob_dds_config_handler.cpp:106-140).
    ShowVariables,
    /// Anything else: "Unknown operator, bad internal cmd".
    Unknown,
}

/// One lexical token: a keyword or name, an integer, or a quoted string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Int(i64),
    Quoted(String),
    Equals,
    Other(char),
}

/// `identifer`: `[A-Za-z0-9$_#]*`; `int_num`: `[-+]?[0-9]{1,17}`, which wins a tie of
/// lengths because it comes first (ob_proxy_parser.l:324-327, :701-705).
fn tokens(sql: &str) -> Vec<Token> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || matches!(c, '$' | '_' | '#');
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if matches!(c, '\'' | '"' | '`') {
            let end = chars[i + 1..]
                .iter()
                .position(|x| *x == c)
                .map(|p| i + 1 + p);
            match end {
                Some(end) => {
                    out.push(Token::Quoted(chars[i + 1..end].iter().collect()));
                    i = end + 1;
                }
                None => {
                    out.push(Token::Other(c));
                    i += 1;
                }
            }
            continue;
        }
        let ident_len = chars[i..].iter().take_while(|c| is_ident(**c)).count();
        let sign = usize::from(matches!(c, '-' | '+'));
        let digits = chars[i + sign..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if (1..=17).contains(&digits) && sign + digits >= ident_len {
            let text: String = chars[i..i + sign + digits].iter().collect();
            out.push(Token::Int(text.parse().unwrap_or(0)));
            i += sign + digits;
        } else if ident_len > 0 {
            out.push(Token::Word(chars[i..i + ident_len].iter().collect()));
            i += ident_len;
        } else {
            out.push(if c == '=' {
                Token::Equals
            } else {
                Token::Other(c)
            });
            i += 1;
        }
    }
    out
}

fn word(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token::Word(w)) => Some(w.as_str()),
        _ => None,
    }
}

fn is(t: Option<&Token>, keyword: &str) -> bool {
    word(t).is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// `NAME_OB`: a name, bare or quoted.
fn name(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) | Some(Token::Quoted(w)) => Some(w.clone()),
        _ => None,
    }
}

pub fn parse(sql: &str) -> Statement {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let t = tokens(sql);
    let at = |i: usize| t.get(i);
    if is(at(0), "alter") && is(at(1), "proxyconfig") && is(at(2), "set") {
        let (Some(name), Some(Token::Equals)) = (name(at(3)), at(4)) else {
            return Statement::Unknown;
        };
        let value = match (at(5), t.len()) {
            (None, _) => Value::Empty,
            (Some(Token::Int(i)), 6) => Value::Int(*i),
            (Some(Token::Word(w) | Token::Quoted(w)), 6) => Value::Text(w.clone()),
            _ => return Statement::Unknown,
        };
        return Statement::Alter { name, value };
    }
    if is(at(0), "show") && is(at(1), "proxyconfig") {
        let (listing, next) = if is(at(2), "all") {
            (Listing::Levels, 3)
        } else if is(at(2), "diff") && is(at(3), "user") {
            (Listing::DiffUser, 4)
        } else if is(at(2), "diff") {
            (Listing::Diff, 3)
        } else {
            (Listing::All, 2)
        };
        let like = match (at(next), at(next + 1), t.len()) {
            (None, _, _) => None,
            (Some(_), Some(_), n) if is(at(next), "like") && n == next + 2 => name(at(next + 1)),
            _ => return Statement::Unknown,
        };
        if at(next).is_some() && like.is_none() {
            return Statement::Unknown;
        }
        return Statement::ShowConfig { listing, like };
    }
    if is(at(0), "show") && is(at(1), "proxyinfo") && t.len() == 3 {
        return match word(at(2)) {
            Some(w) => Statement::ShowInfo(w.to_ascii_lowercase()),
            None => Statement::Unknown,
        };
    }
    if is(at(0), "ping") && is(at(1), "proxy") && t.len() == 2 {
        return Statement::Ping;
    }
    if is(at(0), "select") {
        // As `handle_select_session_variables` takes it: everything after SELECT, trimmed.
        let key = sql[6..].trim().to_owned();
        return Statement::Select(key);
    }
    if is(at(0), "set")
        || is(at(0), "begin")
        || (is(at(0), "start") && is(at(1), "transaction"))
        || is(at(0), "commit")
        || is(at(0), "rollback")
    {
        return Statement::RespondOk;
    }
    if is(at(0), "show") {
        return Statement::ShowVariables;
    }
    Statement::Unknown
}

/// `match_like` with `%` and `_` and no escape, case-sensitive (`wildcmp` over
/// utf8mb4_bin; an empty pattern matches everything, v4.3.1:src/lib/charset/ob_charset.cpp:2106-2147).
pub fn like(text: &str, pattern: &str) -> bool {
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(&t[i..], rest)),
            Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    p.is_empty() || go(&t, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alter(sql: &str) -> (String, Value) {
        match parse(sql) {
            Statement::Alter { name, value } => (name, value),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn alter_values_are_read_as_obproxys_lexer_reads_them() {
        assert_eq!(
            alter("ALTER proxyconfig SET hot_upgrade_exit_timeout = 5000000"),
            ("hot_upgrade_exit_timeout".into(), Value::Int(5_000_000))
        );
        assert_eq!(alter("alter PROXYCONFIG set x=-1;").1, Value::Int(-1));
        assert_eq!(alter("alter proxyconfig set x = 007").1.text(), "7");
        assert_eq!(
            alter("alter proxyconfig set x = 5s").1,
            Value::Text("5s".into())
        );
        assert_eq!(
            alter("alter proxyconfig set x = '1.5 s'").1,
            Value::Text("1.5 s".into())
        );
        assert_eq!(alter("alter proxyconfig set x =").1, Value::Empty);
        assert_eq!(parse("alter proxyconfig set x = 1.5"), Statement::Unknown);
    }

    #[test]
    fn show_statements_take_their_options() {
        assert_eq!(
            parse("show proxyconfig like 'hot_upgrade%'"),
            Statement::ShowConfig {
                listing: Listing::All,
                like: Some("hot_upgrade%".into())
            }
        );
        assert_eq!(
            parse("SHOW PROXYCONFIG DIFF USER"),
            Statement::ShowConfig {
                listing: Listing::DiffUser,
                like: None
            }
        );
        assert_eq!(
            parse("show proxyinfo binary"),
            Statement::ShowInfo("binary".into())
        );
        assert_eq!(parse("show proxyconfig like"), Statement::Unknown);
        assert_eq!(parse("show databases"), Statement::ShowVariables);
        assert_eq!(
            parse("select @@version_comment limit 1"),
            Statement::Select("@@version_comment limit 1".into())
        );
        assert_eq!(parse("SET autocommit=0"), Statement::RespondOk);
        assert_eq!(parse("drop table t"), Statement::Unknown);
    }

    #[test]
    fn like_is_case_sensitive_with_percent_and_underscore() {
        assert!(like("hot_upgrade_exit_timeout", "hot_upgrade%"));
        assert!(like("listen_port", "listen_por_"));
        assert!(!like("listen_port", "LISTEN_PORT"));
        assert!(like("anything", ""));
        assert!(!like("listen_port", "listen"));
    }
}
