//! The function registry: named Rust functions a worker can run, with the stock built-ins.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use htex_protocol::TaskError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a registered function can fail.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The arguments did not decode into the function's argument type.
    #[error("arguments do not match the function: {0}")]
    BadArguments(String),
    /// The function returned an error.
    #[error("{0}")]
    Failed(String),
}

type RawFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, FunctionError> + Send + Sync>;

/// Named functions, called with MessagePack arguments and returning MessagePack values.
#[derive(Clone, Default)]
pub struct Registry {
    functions: BTreeMap<String, RawFunction>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stock functions: `noop`, `sleep` (milliseconds), `echo` (returns its arguments),
    /// `fail` (fails with the given message) and `panic` (panics with it).
    pub fn with_builtins() -> Self {
        let mut registry = Registry::new();
        registry.register_raw("noop", |_| Ok(NIL.to_vec()));
        registry.register_raw("echo", |args| Ok(args.to_vec()));
        registry.register("sleep", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok::<_, String>(())
        });
        registry.register("fail", |message: String| Err::<(), _>(message));
        registry.register("panic", |message: String| -> Result<(), String> {
            panic!("{message}")
        });
        registry
    }

    /// Registers a typed function: arguments decode from MessagePack into `A`, the value `R`
    /// encodes back, and an `Err(E)` becomes a `Failed` task error.
    pub fn register<A, R, E, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned,
        R: Serialize,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        self.register_raw(name, move |args| {
            let args: A = rmp_serde::from_slice(args)
                .map_err(|e| FunctionError::BadArguments(e.to_string()))?;
            let value = f(args).map_err(|e| FunctionError::Failed(e.to_string()))?;
            rmp_serde::to_vec(&value).map_err(|e| FunctionError::Failed(e.to_string()))
        })
    }

    /// Registers a function over raw bytes.
    pub fn register_raw<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&[u8]) -> Result<Vec<u8>, FunctionError> + Send + Sync + 'static,
    {
        self.functions.insert(name.to_string(), Arc::new(f));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }

    /// Calls a function; a panic inside it becomes `Panicked` and leaves the caller running.
    pub fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TaskError> {
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| TaskError::UnknownFunction {
                name: name.to_string(),
                available: self.names(),
            })?;
        match catch_unwind(AssertUnwindSafe(|| f(args))) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(FunctionError::BadArguments(message))) => Err(TaskError::BadRequest {
                message: format!("function `{name}`: {message}"),
            }),
            Ok(Err(FunctionError::Failed(message))) => Err(TaskError::Failed {
                message,
                output: None,
            }),
            Err(payload) => Err(TaskError::Panicked {
                message: panic_message(payload.as_ref()),
            }),
        }
    }
}

/// MessagePack `nil`, the value of a function that returns nothing.
const NIL: [u8; 1] = [0xc0];

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<T: Serialize>(value: T) -> Vec<u8> {
        rmp_serde::to_vec(&value).unwrap()
    }

    #[test]
    fn builtins_behave() {
        let r = Registry::with_builtins();
        assert_eq!(r.call("noop", b"").unwrap(), NIL);
        assert_eq!(r.call("echo", b"\x01\x02").unwrap(), b"\x01\x02");
        assert_eq!(r.call("sleep", &args(1u64)).unwrap(), NIL);
        let failed = r.call("fail", &args("boom")).unwrap_err();
        assert_eq!(
            failed,
            TaskError::Failed {
                message: "boom".into(),
                output: None
            }
        );
    }

    #[test]
    fn panic_is_caught_and_named() {
        let r = Registry::with_builtins();
        let err = r.call("panic", &args("oh no")).unwrap_err();
        assert_eq!(
            err,
            TaskError::Panicked {
                message: "oh no".into()
            }
        );
        // The registry still works afterwards.
        assert!(r.call("noop", b"").is_ok());
    }

    #[test]
    fn unknown_function_lists_what_exists() {
        let err = Registry::with_builtins().call("nope", b"").unwrap_err();
        assert!(
            matches!(&err, TaskError::UnknownFunction { name, available }
            if name == "nope" && available.contains(&"echo".to_string()))
        );
    }

    #[test]
    fn typed_function_with_wrong_arguments_is_a_bad_request() {
        let mut r = Registry::new();
        r.register("add", |(a, b): (i64, i64)| Ok::<_, String>(a + b));
        assert_eq!(r.call("add", &args((2, 3))).unwrap(), args(5));
        assert!(matches!(
            r.call("add", &args("x")),
            Err(TaskError::BadRequest { .. })
        ));
    }
}
