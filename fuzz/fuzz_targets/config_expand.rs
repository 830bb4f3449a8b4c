//! `${VAR}` expansion of config files (`config::load::expand`, through
//! `stapes::fuzzing`): the text pass that runs before YAML parsing.
//!
//! Input: the file's text. Expansion never adds or removes a line (nor adds
//! a carriage return), leaves comment lines and text without `$` alone,
//! inserts a value once (a value that looks like a reference stays as it
//! is), and escaping every `${` as `$${` gives the text back unchanged.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use stapes::fuzzing::expand_config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env: HashMap<String, String> = [
        ("A", "alpha"),
        ("EMPTY", ""),
        ("MULTI", "x\ny"),
        ("REF", "${A}"),
        ("DOLLAR", "$"),
        ("_UNDER_1", "u"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    if let Ok(out) = expand_config(text, "fuzz.yml", &env) {
        assert_eq!(out.matches('\n').count(), text.matches('\n').count(), "lines changed");
        // A value never brings a line break; a reference whose variable is
        // set drops its default, line breaks and all.
        assert!(out.matches('\r').count() <= text.matches('\r').count(), "a value added a CR");
        for (before, after) in text.split('\n').zip(out.split('\n')) {
            if before.trim_start().starts_with('#') || !before.contains('$') {
                assert_eq!(before, after, "a line without references changed");
            }
        }
        if !text.contains('$') {
            assert_eq!(out, text);
        }
    }

    let escaped: String = text
        .split_inclusive('\n')
        .map(|line| {
            if line.trim_start().starts_with('#') {
                line.to_owned()
            } else {
                line.replace("${", "$${")
            }
        })
        .collect();
    assert_eq!(expand_config(&escaped, "fuzz.yml", &env).ok().as_deref(), Some(text), "escape");
});
