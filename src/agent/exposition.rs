//! The `/metrics` body: the text exposition, gzip-encoded when the scraper's `Accept-Encoding`
//! allows it (Prometheus always asks), so a node's scrape costs the network a tenth of the bytes.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

/// Whether an `Accept-Encoding` value (RFC 9110, 12.5.3) accepts gzip: `gzip` (or the old
/// `x-gzip`) with a non-zero weight, or else `*` with one; an explicit `gzip;q=0` refuses it.
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let mut gzip = None;
    let mut any = None;
    for part in accept_encoding.split(',') {
        let mut fields = part.split(';');
        let coding = fields.next().unwrap_or_default().trim();
        let weight = fields
            .filter_map(|f| {
                let (key, value) = f.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| value.trim().parse::<f32>().unwrap_or(0.0))
            })
            .next()
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(weight > 0.0);
        } else if coding == "*" {
            any = Some(weight > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// `body` gzip-compressed at the fastest level: a scrape's text compresses about tenfold even
/// there, and the agent's CPU matters more than the last few bytes.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 8), Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn accept_encoding_is_read_like_rfc_9110() {
        struct Case {
            header: &'static str,
            want: bool,
        }
        let cases = [
            // What Prometheus sends.
            Case {
                header: "gzip",
                want: true,
            },
            // What curl --compressed sends.
            Case {
                header: "deflate, gzip, br, zstd",
                want: true,
            },
            Case {
                header: "deflate, GZIP;q=0.5",
                want: true,
            },
            Case {
                header: "x-gzip",
                want: true,
            },
            Case {
                header: "*",
                want: true,
            },
            Case {
                header: "identity",
                want: false,
            },
            Case {
                header: "",
                want: false,
            },
            Case {
                header: "gzip;q=0",
                want: false,
            },
            Case {
                header: "gzip; q=0.000, *",
                want: false,
            },
            Case {
                header: "*;q=0",
                want: false,
            },
            Case {
                header: "br, deflate",
                want: false,
            },
            Case {
                header: "gzip;q=junk",
                want: false,
            },
        ];
        for case in cases {
            assert_eq!(accepts_gzip(case.header), case.want, "{:?}", case.header);
        }
    }

    #[test]
    fn gzip_round_trips() {
        let text = "pullwatch_registry_up{node=\"n\",registry=\"r\"} 1\n".repeat(200);
        let packed = gzip(text.as_bytes()).unwrap();
        assert!(packed.len() < text.len() / 10, "{}", packed.len());
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_string(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, text);
    }
}
