//! Parsing of settings that hold secrets (passwords in `RABBITMQ_URL`, message keys):
//! a bad value is refused with what is wrong, but without the value, which clap's own
//! error would print to the terminal and the logs.

use std::ffi::OsStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// A clap value parser that runs `parse` and keeps the value out of its errors.
#[derive(Clone, Copy)]
pub struct Secret<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Secret<T> {
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg.map_or_else(String::new, ToString::to_string);
        let refuse = |reason: &str| {
            let message = format!("invalid value for {name} (not shown): {reason}\n");
            clap::Error::raw(ErrorKind::ValueValidation, message).with_cmd(command)
        };
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8"))?;
        (self.0)(text).map_err(|reason| refuse(&reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_secret_is_not_in_the_error() {
        let parser = Secret(|text: &str| -> Result<u8, String> {
            text.parse().map_err(|_| "expected a number".to_owned())
        });
        let command = clap::Command::new("retrocat");
        let error = parser
            .parse_ref(&command, None, OsStr::new("hunter2"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected a number"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
