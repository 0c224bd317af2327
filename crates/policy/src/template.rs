//! Name templates: how the calling client is named from its verified evidence, for key lookup
//! (`client: "{client_id}"`) and for the OBIE `iss` it must sign with
//! (`iss: "{org_id}/{cert_cn}"`).
//!
//! Placeholders: `{client_id}` (the access token's `client_id`), `{org_id}` (the certificate's
//! organizationIdentifier), `{cert_cn}` (its commonName, the OB software statement id), `{cert_o}`
//! (its organizationName), `{cert_ou}` (its organizationalUnitName, the OB organisation id). A
//! template renders only when every placeholder it uses has a value: a caller that cannot be
//! named is refused, never matched against a partial name.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    ClientId,
    OrgId,
    CertCn,
    CertO,
    CertOu,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    raw: String,
    pieces: Vec<Piece>,
}

/// The verified facts a template can use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    pub client_id: Option<&'a str>,
    pub org_id: Option<&'a str>,
    pub cert_cn: Option<&'a str>,
    pub cert_o: Option<&'a str>,
    pub cert_ou: Option<&'a str>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            if i > 0 {
                pieces.push(Piece::Lit(rest[..i].to_string()));
            }
            let end = rest[i..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in `{s}`"))?;
            let name = &rest[i + 1..i + end];
            let var = match name {
                "client_id" => Var::ClientId,
                "org_id" => Var::OrgId,
                "cert_cn" => Var::CertCn,
                "cert_o" => Var::CertO,
                "cert_ou" => Var::CertOu,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` (client_id, org_id, cert_cn, cert_o, cert_ou)"
                    ))
                }
            };
            pieces.push(Piece::Var(var));
            rest = &rest[i + end + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray `}}` in `{s}`"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_string()));
        }
        if pieces.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Template {
            raw: s.to_string(),
            pieces,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The name, when every placeholder has a non-empty value.
    pub fn render(&self, f: &Facts<'_>) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) => {
                    let value = match v {
                        Var::ClientId => f.client_id,
                        Var::OrgId => f.org_id,
                        Var::CertCn => f.cert_cn,
                        Var::CertO => f.cert_o,
                        Var::CertOu => f.cert_ou,
                    }?;
                    if value.is_empty() {
                        return None;
                    }
                    out.push_str(value);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_only_with_every_value() {
        let t = Template::parse("{org_id}/{cert_cn}").unwrap();
        let f = Facts {
            org_id: Some("0015800001041REAAY"),
            cert_cn: Some("ssa-1"),
            ..Facts::default()
        };
        assert_eq!(t.render(&f).as_deref(), Some("0015800001041REAAY/ssa-1"));
        assert_eq!(t.render(&Facts::default()), None);
        let empty = Facts {
            org_id: Some(""),
            cert_cn: Some("x"),
            ..Facts::default()
        };
        assert_eq!(t.render(&empty), None);
        assert!(Template::parse("{nope}").is_err());
        assert!(Template::parse("{client_id").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(Template::parse("").is_err());
        assert_eq!(
            Template::parse("tpp-{client_id}")
                .unwrap()
                .render(&Facts {
                    client_id: Some("c1"),
                    ..Facts::default()
                })
                .as_deref(),
            Some("tpp-c1")
        );
    }
}
