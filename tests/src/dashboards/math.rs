//! Grafana's math expressions (`$B >= 16`, `($B == 0 || $D == 0) && $F != 2`): comparison,
//! logic and arithmetic over the values of other refIds, by precedence climbing.

use std::collections::HashMap;

use anyhow::{anyhow, ensure, Result};
use regex::Regex;

/// Evaluates a Grafana math expression (`$B >= 16`, `($B == 0 || $D == 0) && $F != 2`).
pub fn eval_math(expr: &str, vars: &HashMap<String, f64>) -> Result<f64> {
    let token = Regex::new(r"\s*(\$[A-Za-z]\w*|\d+(?:\.\d+)?|>=|<=|==|!=|&&|\|\||[<>()+\-*/])")?;
    let mut toks = Vec::new();
    let mut rest = expr;
    while !rest.trim().is_empty() {
        let m = token
            .captures(rest)
            .filter(|c| c.get(0).map(|m| m.start()) == Some(0))
            .ok_or_else(|| anyhow!("bad math {expr:?} at {rest:?}"))?;
        toks.push(m[1].to_string());
        rest = &rest[m[0].len()..];
    }
    fn prec(op: &str) -> Option<u8> {
        Some(match op {
            "||" => 1,
            "&&" => 2,
            "==" | "!=" | "<" | ">" | "<=" | ">=" => 3,
            "+" | "-" => 4,
            "*" | "/" => 5,
            _ => return None,
        })
    }
    fn apply(op: &str, a: f64, b: f64) -> f64 {
        let t = |c: bool| if c { 1.0 } else { 0.0 };
        match op {
            "||" => t(a != 0.0 || b != 0.0),
            "&&" => t(a != 0.0 && b != 0.0),
            "==" => t(a == b),
            "!=" => t(a != b),
            "<" => t(a < b),
            ">" => t(a > b),
            "<=" => t(a <= b),
            ">=" => t(a >= b),
            "+" => a + b,
            "-" => a - b,
            "*" => a * b,
            _ => a / b,
        }
    }
    fn parse(
        toks: &[String],
        pos: &mut usize,
        min: u8,
        vars: &HashMap<String, f64>,
    ) -> Result<f64> {
        let tok = toks
            .get(*pos)
            .ok_or_else(|| anyhow!("unexpected end"))?
            .clone();
        *pos += 1;
        let mut lhs = if tok == "(" {
            let v = parse(toks, pos, 1, vars)?;
            ensure!(toks.get(*pos).map(String::as_str) == Some(")"), "missing )");
            *pos += 1;
            v
        } else if let Some(name) = tok.strip_prefix('$') {
            *vars
                .get(name)
                .ok_or_else(|| anyhow!("no value for ${name}"))?
        } else {
            tok.parse()?
        };
        while let Some(op) = toks.get(*pos) {
            let Some(p) = prec(op) else { break };
            if p < min {
                break;
            }
            let op = op.clone();
            *pos += 1;
            let rhs = parse(toks, pos, p + 1, vars)?;
            lhs = apply(&op, lhs, rhs);
        }
        Ok(lhs)
    }
    let mut pos = 0;
    let v = parse(&toks, &mut pos, 1, vars)?;
    ensure!(pos == toks.len(), "trailing tokens in {expr:?}");
    Ok(v)
}
