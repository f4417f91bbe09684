//! etcdctl's `txn` input language, read from standard input: compares, a blank line, success
//! requests, a blank line, failure requests.
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "v"
//!
//! put key1 "new value"
//! get key2
//!
//! del key3
//! ```

use synod_client::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
};
use synod_client::prefix_range_end;

/// Parses the whole input into a txn.
pub fn parse(input: &str) -> Result<TxnRequest, String> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in input.lines() {
        let line = line.trim();
        if line.is_empty() {
            if sections.len() < 3 {
                sections.push(Vec::new());
            }
            continue;
        }
        sections
            .last_mut()
            .expect("one section at least")
            .push(line);
    }
    sections.resize(3, Vec::new());
    let compare = sections[0]
        .iter()
        .map(|line| parse_compare(line))
        .collect::<Result<_, _>>()?;
    let success = sections[1]
        .iter()
        .map(|line| parse_op(line))
        .collect::<Result<_, _>>()?;
    let failure = sections[2]
        .iter()
        .map(|line| parse_op(line))
        .collect::<Result<_, _>>()?;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

/// Splits a line into words, honouring double quotes and backslash escapes inside them.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => word.push('\n'),
                        Some(other) => word.push(other),
                        None => return Err(format!("unterminated escape in {line:?}")),
                    },
                    Some(other) => word.push(other),
                    None => return Err(format!("unterminated quote in {line:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

fn parse_compare(line: &str) -> Result<Compare, String> {
    let bad = || format!("malformed comparison {line:?} (expected e.g. mod(\"key\") > \"0\")");
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').ok_or_else(bad)?;
    let target = line[..open].trim();
    let key_words = words(&line[open + 1..close])?;
    let [key] = key_words.as_slice() else {
        return Err(bad());
    };
    let rest = words(&line[close + 1..])?;
    let [op, operand] = rest.as_slice() else {
        return Err(bad());
    };
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        _ => return Err(format!("unknown comparison operator {op:?} in {line:?}")),
    };
    let number = || {
        operand
            .parse::<i64>()
            .map_err(|_| format!("{operand:?} is not a number in {line:?}"))
    };
    let (target, union) = match target {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number()?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number()?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number()?)),
        "val" | "value" => (
            CompareTarget::Value,
            TargetUnion::Value(operand.as_bytes().to_vec()),
        ),
        "lease" => {
            let id = i64::from_str_radix(operand, 16)
                .map_err(|_| format!("{operand:?} is not a hex lease id"))?;
            (CompareTarget::Lease, TargetUnion::Lease(id))
        }
        other => return Err(format!("unknown comparison target {other:?} in {line:?}")),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

fn parse_op(line: &str) -> Result<RequestOp, String> {
    let words = words(line)?;
    let flags: Vec<&str> = words
        .iter()
        .filter(|w| w.starts_with("--"))
        .map(String::as_str)
        .collect();
    let args: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
    let prefix = flags.contains(&"--prefix");
    let range_end = |key: &str, end: Option<&&String>| -> Vec<u8> {
        match end {
            Some(end) => end.as_bytes().to_vec(),
            None if prefix => prefix_range_end(key.as_bytes()),
            None => Vec::new(),
        }
    };
    let request = match args.as_slice() {
        [command, key, value] if command.as_str() == "put" => Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..PutRequest::default()
        }),
        [command, key, rest @ ..] if command.as_str() == "get" && rest.len() <= 1 => {
            Request::RequestRange(RangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: range_end(key, rest.first()),
                ..RangeRequest::default()
            })
        }
        [command, key, rest @ ..] if command.as_str() == "del" && rest.len() <= 1 => {
            Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: range_end(key, rest.first()),
                ..DeleteRangeRequest::default()
            })
        }
        _ => {
            return Err(format!(
                "malformed request {line:?} (expected put KEY VALUE, get KEY [END], del KEY [END])"
            ));
        }
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_txn_input() {
        let txn = parse("mod(\"key1\") > \"0\"\nvalue(\"k 2\") = \"a b\"\n\nput key1 \"over wrote\"\nget key1\n\ndel k --prefix\n")
            .expect("valid input");
        assert_eq!(txn.compare.len(), 2);
        assert_eq!(txn.compare[1].key, b"k 2");
        assert_eq!(
            txn.compare[1].target_union,
            Some(TargetUnion::Value(b"a b".to_vec()))
        );
        assert_eq!(txn.success.len(), 2);
        match &txn.failure[0].request {
            Some(Request::RequestDeleteRange(delete)) => assert_eq!(delete.range_end, b"l"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse("nonsense(\"a\") = 1\n").is_err());
    }
}
