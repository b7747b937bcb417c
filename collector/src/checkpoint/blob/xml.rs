//! The one XML document the store reads: the List Blobs answer
//! (<https://learn.microsoft.com/rest/api/storageservices/list-blobs>, "Response body"):
//!
//! ```xml
//! <EnumerationResults ...>
//!   <Blobs>
//!     <Blob>
//!       <Name>ns/hub/$default/ownership/0</Name>
//!       <Properties><Last-Modified>Fri, 26 Jun 2015 23:39:12 GMT</Last-Modified><Etag>0x8D…</Etag>…</Properties>
//!       <Metadata><ownerid>…</ownerid></Metadata>
//!     </Blob>
//!   </Blobs>
//!   <NextMarker>…</NextMarker>
//! </EnumerationResults>
//! ```
//!
//! A small element-tree reader (elements, text, the five predefined entities and numeric
//! character references; declarations, comments and attributes skipped) instead of an XML
//! crate for this one shape.

/// One blob of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListedBlob {
    /// The blob's name.
    pub name: String,
    /// `Last-Modified` (RFC 1123).
    pub last_modified: Option<String>,
    /// `Etag` (as listed: without quotes).
    pub etag: Option<String>,
    /// Metadata, keys as listed.
    pub metadata: Vec<(String, String)>,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// The blobs.
    pub blobs: Vec<ListedBlob>,
    /// The marker of the next page, if any.
    pub next_marker: Option<String>,
}

#[derive(Debug, Default)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// Parses a List Blobs answer.
pub fn parse_list(xml: &str) -> Result<ListPage, String> {
    let root = parse(xml)?;
    if root.name != "EnumerationResults" {
        return Err(format!(
            "expected EnumerationResults, found <{}>",
            root.name
        ));
    }
    let blobs = root
        .child("Blobs")
        .map(|b| {
            b.children
                .iter()
                .filter(|c| c.name == "Blob")
                .map(listed_blob)
                .collect()
        })
        .unwrap_or_default();
    let next_marker = root
        .child("NextMarker")
        .map(|m| m.text.trim().to_owned())
        .filter(|m| !m.is_empty());
    Ok(ListPage { blobs, next_marker })
}

fn listed_blob(b: &Element) -> ListedBlob {
    let props = b.child("Properties");
    let prop = |n: &str| {
        props
            .and_then(|p| p.child(n))
            .map(|e| e.text.trim().to_owned())
    };
    ListedBlob {
        name: b.child("Name").map(|n| n.text.clone()).unwrap_or_default(),
        last_modified: prop("Last-Modified"),
        etag: prop("Etag"),
        metadata: b
            .child("Metadata")
            .map(|m| {
                m.children
                    .iter()
                    .map(|c| (c.name.clone(), c.text.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The document's root element.
fn parse(xml: &str) -> Result<Element, String> {
    let mut stack: Vec<Element> = vec![Element::default()];
    let mut rest = xml.trim_start_matches('\u{feff}');
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            append_text(&mut stack, rest)?;
            break;
        };
        append_text(&mut stack, &rest[..lt])?;
        rest = &rest[lt..];
        if let Some(r) = rest.strip_prefix("<?") {
            rest = skip_past(r, "?>")?;
        } else if let Some(r) = rest.strip_prefix("<!--") {
            rest = skip_past(r, "-->")?;
        } else if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let end = r.find("]]>").ok_or("unterminated CDATA")?;
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&r[..end]);
            }
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = r.find('>').ok_or("unterminated end tag")?;
            let name = r[..end].trim();
            let done = stack.pop().ok_or("unbalanced end tag")?;
            if done.name != name || stack.is_empty() {
                return Err(format!("</{name}> does not close <{}>", done.name));
            }
            if let Some(parent) = stack.last_mut() {
                parent.children.push(done);
            }
            rest = &r[end + 1..];
        } else {
            let r = &rest[1..];
            let end = r.find('>').ok_or("unterminated start tag")?;
            let tag = &r[..end];
            let self_closing = tag.ends_with('/');
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .ok_or("empty tag")?
                .to_owned();
            let el = Element {
                name,
                ..Element::default()
            };
            if self_closing {
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(el);
                }
            } else {
                stack.push(el);
            }
            rest = &r[end + 1..];
        }
    }
    if stack.len() != 1 {
        return Err("unclosed elements".into());
    }
    stack
        .pop()
        .and_then(|doc| doc.children.into_iter().next())
        .ok_or_else(|| "no root element".into())
}

fn skip_past<'a>(s: &'a str, end: &str) -> Result<&'a str, String> {
    s.find(end)
        .map(|i| &s[i + end.len()..])
        .ok_or_else(|| format!("missing {end}"))
}

fn append_text(stack: &mut [Element], raw: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Ok(());
    }
    let text = unescape(raw)?;
    if let Some(top) = stack.last_mut() {
        top.text.push_str(&text);
    }
    Ok(())
}

/// Replaces the predefined entities and numeric character references.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let r = &rest[amp + 1..];
        let semi = r.find(';').ok_or("unterminated entity")?;
        let entity = &r[..semi];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            e => {
                let code = if let Some(h) = e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = e.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{e};"))?
            }
        };
        out.push(c);
        rest = &r[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_names_properties_metadata_and_the_marker() {
        let xml = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\
            <EnumerationResults ServiceEndpoint=\"http://127.0.0.1:10000/devstoreaccount1\" ContainerName=\"c\">\
            <Prefix>ns/hub/$default/ownership/</Prefix><Blobs>\
            <Blob><Name>ns/hub/$default/ownership/0</Name><Properties>\
            <Last-Modified>Fri, 26 Jun 2015 23:39:12 GMT</Last-Modified><Etag>0x8D1</Etag>\
            <Content-Length>0</Content-Length></Properties>\
            <Metadata><ownerid>a&amp;b &#x41;&#66;</ownerid></Metadata></Blob>\
            <Blob><Name>ns/hub/$default/ownership/1</Name><Properties><Etag>\"0x8D2\"</Etag></Properties><Metadata /></Blob>\
            </Blobs><NextMarker>m&lt;2</NextMarker></EnumerationResults>";
        let page = parse_list(xml).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("m<2"));
        assert_eq!(page.blobs.len(), 2);
        assert_eq!(page.blobs[0].name, "ns/hub/$default/ownership/0");
        assert_eq!(
            page.blobs[0].last_modified.as_deref(),
            Some("Fri, 26 Jun 2015 23:39:12 GMT")
        );
        assert_eq!(page.blobs[0].etag.as_deref(), Some("0x8D1"));
        assert_eq!(
            page.blobs[0].metadata,
            vec![("ownerid".to_string(), "a&b AB".to_string())]
        );
        assert!(page.blobs[1].metadata.is_empty());
        let empty =
            parse_list("<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>").unwrap();
        assert_eq!(empty, ListPage::default());
    }

    #[test]
    fn broken_documents_are_errors_not_panics() {
        for bad in [
            "",
            "<EnumerationResults>",
            "<a></b>",
            "<EnumerationResults><Blobs><Blob><Name>x&bogus;</Name></Blob></Blobs></EnumerationResults>",
            "<Error><Code>AuthenticationFailed</Code></Error>",
            "<a",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }
}
