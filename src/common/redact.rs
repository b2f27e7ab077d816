//! Secrets the agent never writes anywhere (logs, status, operation events,
//! audit log, error messages): the values of obproxy config items whose name
//! holds `password` (`obproxy_sys_password`, `observer_sys_password1`, ... in
//! `-o k=v,k=v`) and of any `--*password*` argument.

/// What a secret value is replaced with.
pub const MASK: &str = "<redacted>";

/// Whether an item or flag name names a secret.
pub fn is_secret(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// obproxy's argument list as it may be shown: every secret value masked.
pub fn args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-o" | "--optstr" => {
                out.push(arg.clone());
                if let Some(value) = iter.next() {
                    out.push(optstr(value));
                }
            }
            a if a.starts_with("--optstr=") => {
                out.push(format!("--optstr={}", optstr(&a["--optstr=".len()..])));
            }
            a if a.starts_with("-o") && !a.starts_with("--") => {
                out.push(format!("-o{}", optstr(&a[2..])));
            }
            a if a.starts_with("--") && is_secret(a) => match a.split_once('=') {
                Some((flag, _)) => out.push(format!("{flag}={MASK}")),
                None => {
                    out.push(arg.clone());
                    // `--x_password VALUE`: the next argument is the secret.
                    if iter.len() > 0 {
                        iter.next();
                        out.push(MASK.to_string());
                    }
                }
            },
            _ => out.push(arg.clone()),
        }
    }
    out
}

/// An obproxy `-o` string (items split on `,` and newlines, as obproxy
/// does) with the values of secret items masked.
pub fn optstr(optstr: &str) -> String {
    let item = |item: &str| match item.split_once('=') {
        Some((name, _)) if is_secret(name) => format!("{name}={MASK}"),
        _ => item.to_string(),
    };
    optstr
        .split('\n')
        .map(|line| line.split(',').map(item).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Free text (an error message that may quote the configuration): after
/// every name holding `password` followed by `=` or `:`, the value up to the
/// next delimiter is masked.
pub fn text(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(at) = lower[from..].find("password") {
        let mut i = from + at + "password".len();
        // The rest of the name (`password1`, `passwords_x`).
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        from = i;
        // `=`, `:` or `": "`, possibly with spaces and a quote around it.
        let mut j = i;
        while j < bytes.len() && matches!(bytes[j], b' ' | b'"' | b'\'' | b'\\') {
            j += 1;
        }
        if j >= bytes.len() || !matches!(bytes[j], b'=' | b':') {
            continue;
        }
        j += 1;
        while j < bytes.len() && matches!(bytes[j], b' ' | b'"' | b'\'' | b'\\') {
            j += 1;
        }
        let end = (j..bytes.len())
            .find(|&k| {
                matches!(
                    bytes[k],
                    b',' | b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'\\' | b')' | b']' | b'}' | b';'
                )
            })
            .unwrap_or(bytes.len());
        if end > j {
            out.push_str(&text[copied..j]);
            out.push_str(MASK);
            copied = end;
        }
        from = end.max(from);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn password_items_of_the_optstr_are_masked_and_the_rest_kept() {
        let a = args(&strings(&[
            "-n",
            "app",
            "-o",
            "enable_metadb=false,obproxy_sys_password=5f1c,observer_sys_password1=abc",
        ]));
        assert_eq!(
            a,
            strings(&[
                "-n",
                "app",
                "-o",
                "enable_metadb=false,obproxy_sys_password=<redacted>,observer_sys_password1=<redacted>"
            ])
        );
        assert_eq!(
            args(&strings(&[
                "-oobproxy_sys_password=x",
                "--optstr=a=1,b_password=y"
            ])),
            strings(&[
                "-oobproxy_sys_password=<redacted>",
                "--optstr=a=1,b_password=<redacted>"
            ])
        );
    }

    #[test]
    fn password_flags_are_masked_attached_or_not() {
        assert_eq!(
            args(&strings(&[
                "--sys_password=s3cret",
                "--root-password",
                "s3cret",
                "-N"
            ])),
            strings(&[
                "--sys_password=<redacted>",
                "--root-password",
                "<redacted>",
                "-N"
            ])
        );
    }

    #[test]
    fn free_text_loses_the_values_after_password_names() {
        let t = text(
            r#"invalid type: string "obproxy_sys_password=abc,x=1", expected a sequence; observer_sys_password: 'zz'"#,
        );
        assert!(!t.contains("abc") && !t.contains("zz"), "{t}");
        assert!(t.contains("x=1"), "{t}");
        assert_eq!(text("no secrets here"), "no secrets here");
        assert_eq!(text("password"), "password");
    }
}
