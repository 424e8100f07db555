//! The DNS messages of a lookup: the query Go's resolver sends (one question, recursion desired,
//! an EDNS0 OPT record offering 1232-byte UDP answers) and what is read from an answer. Answers
//! come from the network: every read is bounds-checked, and a malformed one is an error.

use std::net::IpAddr;

/// Go's `maxDNSPacketSize`: the UDP answer size offered, and the buffer for it.
pub const MAX_UDP_ANSWER: usize = 1232;

/// Record types asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    A,
    Aaaa,
}

impl Family {
    fn code(self) -> u16 {
        match self {
            Family::A => 1,
            Family::Aaaa => 28,
        }
    }
}

const CLASS_IN: u16 = 1;
const TYPE_OPT: u16 = 41;

/// The response code of an answer (RFC 1035 4.1.1 and RFC 6895), by the name `dig` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    Other(u8),
}

impl Rcode {
    fn from_bits(bits: u8) -> Self {
        match bits {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            2 => Rcode::ServFail,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            other => Rcode::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Rcode::NoError => "NOERROR".into(),
            Rcode::FormErr => "FORMERR".into(),
            Rcode::ServFail => "SERVFAIL".into(),
            Rcode::NxDomain => "NXDOMAIN".into(),
            Rcode::NotImp => "NOTIMP".into(),
            Rcode::Refused => "REFUSED".into(),
            Rcode::Other(code) => format!("RCODE{code}"),
        }
    }
}

/// What a lookup needs from an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: Rcode,
    pub truncated: bool,
    pub authoritative: bool,
    pub recursion_available: bool,
    /// Whether the answer section holds a record of the asked type (Go's `skipToAnswer`).
    pub has_asked_type: bool,
    /// A and AAAA records of class IN in the answer section, in order, up to the first record
    /// that cannot be read (Go keeps what it read before it).
    pub addresses: Vec<IpAddr>,
    /// Records in the answer and additional sections (Go's lame-referral test needs both).
    pub answer_count: u16,
    pub additional_count: u16,
    /// The message goes wrong after its question: more than one question, or a record that
    /// cannot be read (an answer cut at the UDP buffer, garbage).
    pub damaged: bool,
}

/// An answer that cannot be read, or is not the answer to the query sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed DNS message")]
    Malformed,
    #[error("not the answer to our query")]
    NotOurs,
}

/// The query for `name` (rooted, of valid labels) and `family`, with `id`.
pub fn query(id: u16, name: &str, family: Family) -> Option<Vec<u8>> {
    let mut packet = Vec::with_capacity(12 + name.len() + 2 + 4 + 11);
    packet.extend_from_slice(&id.to_be_bytes());
    // RD; one question; no answer or authority; one additional (OPT).
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    encode_name(&mut packet, name)?;
    packet.extend_from_slice(&family.code().to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT: root owner, the UDP size as class, no extended flags, no options.
    packet.push(0);
    packet.extend_from_slice(&TYPE_OPT.to_be_bytes());
    packet.extend_from_slice(&(MAX_UDP_ANSWER as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Some(packet)
}

fn encode_name(packet: &mut Vec<u8>, name: &str) -> Option<()> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return None;
    }
    for label in name
        .split('.')
        .filter(|l| !name.is_empty() || !l.is_empty())
    {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    Some(())
}

/// Reads `message` as the answer to `query`. It is ours when its header and first question
/// are (same ID, a response, the same question, as Go's `checkResponse`); what follows is read
/// as far as it can be, the rest marked `damaged`, as Go reads records one at a time.
pub fn answer(message: &[u8], query: &[u8], family: Family) -> Result<Answer, WireError> {
    let mut reader = Reader {
        data: message,
        at: 0,
    };
    let id = reader.u16()?;
    let flags = reader.u16()?;
    let questions = reader.u16()?;
    let answer_count = reader.u16()?;
    let _authorities = reader.u16()?;
    let additional_count = reader.u16()?;
    let is_response = flags & 0x8000 != 0;
    if query.get(..2) != Some(&id.to_be_bytes()[..]) || !is_response || questions == 0 {
        return Err(WireError::NotOurs);
    }
    // The question must be ours: the same name (ASCII case aside), type and class.
    let asked = Reader {
        data: query,
        at: 12,
    }
    .name_labels()?;
    let question = reader.name_labels()?;
    let (qtype, qclass) = (reader.u16()?, reader.u16()?);
    if !asked.eq_ignore_ascii_case(&question) || qtype != family.code() || qclass != CLASS_IN {
        return Err(WireError::NotOurs);
    }
    let mut answer = Answer {
        rcode: Rcode::from_bits((flags & 0x000f) as u8),
        truncated: flags & 0x0200 != 0,
        authoritative: flags & 0x0400 != 0,
        recursion_available: flags & 0x0080 != 0,
        has_asked_type: false,
        addresses: Vec::new(),
        answer_count,
        additional_count,
        damaged: questions > 1,
    };
    if !answer.damaged {
        answer.damaged = read_records(&mut reader, answer_count, family, &mut answer).is_err();
    }
    Ok(answer)
}

/// The answer section's records, into `answer`, until one cannot be read.
fn read_records(
    reader: &mut Reader<'_>,
    count: u16,
    family: Family,
    answer: &mut Answer,
) -> Result<(), WireError> {
    for _ in 0..count {
        reader.skip_name()?;
        let (rtype, class) = (reader.u16()?, reader.u16()?);
        reader.take(4)?;
        let length = usize::from(reader.u16()?);
        let data = reader.take(length)?;
        answer.has_asked_type |= rtype == family.code();
        if class != CLASS_IN {
            continue;
        }
        let address = match rtype {
            1 => <[u8; 4]>::try_from(data).map(IpAddr::from).ok(),
            28 => <[u8; 16]>::try_from(data).map(IpAddr::from).ok(),
            _ => None,
        };
        answer.addresses.extend(address);
    }
    Ok(())
}

/// A cursor over a message; every read checks the bounds.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Malformed)?;
        let bytes = self.data.get(self.at..end).ok_or(WireError::Malformed)?;
        self.at = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Skips a name in place: labels up to a zero byte, or a compression pointer.
    fn skip_name(&mut self) -> Result<(), WireError> {
        loop {
            let length = self.take(1)?[0];
            match length {
                0 => return Ok(()),
                1..=63 => {
                    self.take(usize::from(length))?;
                }
                0xc0..=0xff => {
                    self.take(1)?;
                    return Ok(());
                }
                _ => return Err(WireError::Malformed),
            }
        }
    }

    /// A name's labels joined by dots, following compression pointers (at most 10 of them, as
    /// Go; the name at most 255 bytes, so at most 128 labels), the cursor left after the name
    /// where it is written.
    fn name_labels(&mut self) -> Result<String, WireError> {
        let mut name = String::new();
        let mut at = self.at;
        let mut resume = None;
        let mut pointers = 0;
        for _ in 0..(128 + 10) {
            let length = *self.data.get(at).ok_or(WireError::Malformed)?;
            match length {
                0 => {
                    self.at = resume.unwrap_or(at + 1);
                    return Ok(name);
                }
                1..=63 => {
                    let label = self
                        .data
                        .get(at + 1..at + 1 + usize::from(length))
                        .ok_or(WireError::Malformed)?;
                    if !name.is_empty() {
                        name.push('.');
                    }
                    name.push_str(&String::from_utf8_lossy(label));
                    if name.len() > 255 {
                        return Err(WireError::Malformed);
                    }
                    at += 1 + usize::from(length);
                }
                0xc0..=0xff => {
                    pointers += 1;
                    if pointers > 10 {
                        return Err(WireError::Malformed);
                    }
                    let low = *self.data.get(at + 1).ok_or(WireError::Malformed)?;
                    resume.get_or_insert(at + 2);
                    at = (usize::from(length & 0x3f) << 8) | usize::from(low);
                }
                _ => return Err(WireError::Malformed),
            }
        }
        Err(WireError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with `flags` (QR set by the caller) and these answer records
    /// (owner written as a pointer to the question, type, class, rdata).
    fn response(
        query: &[u8],
        flags: u16,
        records: &[(u16, u16, &[u8])],
        additional: u16,
    ) -> Vec<u8> {
        let question_end = query.len() - 11;
        let mut packet = query[..2].to_vec();
        packet.extend_from_slice(&flags.to_be_bytes());
        packet.extend_from_slice(&1u16.to_be_bytes());
        packet.extend_from_slice(&(records.len() as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(&additional.to_be_bytes());
        packet.extend_from_slice(&query[12..question_end]);
        for (rtype, class, data) in records {
            packet.extend_from_slice(&[0xc0, 12]);
            packet.extend_from_slice(&rtype.to_be_bytes());
            packet.extend_from_slice(&class.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0, 60]);
            packet.extend_from_slice(&(data.len() as u16).to_be_bytes());
            packet.extend_from_slice(data);
        }
        packet
    }

    #[test]
    fn encodes_the_query_go_sends() {
        let packet = query(0x1234, "Registry.Example.", Family::Aaaa).unwrap();
        let mut want = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        want.extend_from_slice(b"\x08Registry\x07Example\x00\x00\x1c\x00\x01");
        want.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(packet, want);
        assert!(query(1, "a..b.", Family::A).is_none());
        assert!(query(1, &format!("{}.", "x".repeat(64)), Family::A).is_none());
    }

    #[test]
    fn reads_answers_row_by_row() {
        let q = query(7, "registry.test.", Family::A).unwrap();
        let ok = response(
            &q,
            0x8180,
            &[
                (5, 1, b"\x03cdn\x00"),
                (1, 1, &[10, 0, 0, 1]),
                (1, 3, &[9, 9, 9, 9]),
            ],
            1,
        );
        let answer = super::answer(&ok, &q, Family::A).unwrap();
        assert_eq!(answer.rcode, Rcode::NoError);
        assert!(answer.has_asked_type && answer.recursion_available && !answer.truncated);
        assert_eq!(
            answer.addresses,
            [IpAddr::from([10, 0, 0, 1])],
            "class IN only"
        );

        let nx = super::answer(&response(&q, 0x8583, &[], 0), &q, Family::A).unwrap();
        assert_eq!(
            (nx.rcode, nx.authoritative, nx.has_asked_type),
            (Rcode::NxDomain, true, false)
        );
        let refused = super::answer(&response(&q, 0x8105, &[], 0), &q, Family::A).unwrap();
        assert_eq!(refused.rcode.name(), "REFUSED");
        let truncated = super::answer(&response(&q, 0x8380, &[], 0), &q, Family::A).unwrap();
        assert!(truncated.truncated);

        // Not ours: another ID, a query, another question, another type.
        let mut other_id = ok.clone();
        other_id[1] ^= 1;
        let mut not_response = ok.clone();
        not_response[2] &= 0x7f;
        let other_name = response(
            &query(7, "registry.tesu.", Family::A).unwrap(),
            0x8180,
            &[],
            0,
        );
        let other_type = response(
            &query(7, "registry.test.", Family::Aaaa).unwrap(),
            0x8180,
            &[],
            0,
        );
        for (what, message) in [
            ("id", other_id),
            ("query", not_response),
            ("name", other_name),
            ("type", other_type),
        ] {
            assert_eq!(
                super::answer(&message, &q, Family::A),
                Err(WireError::NotOurs),
                "{what}"
            );
        }
        // The question's case does not matter (0x20 randomisation by resolvers).
        let upper = response(
            &query(7, "REGISTRY.test.", Family::A).unwrap(),
            0x8180,
            &[],
            0,
        );
        assert!(super::answer(&upper, &q, Family::A).is_ok());
    }

    #[test]
    fn a_damaged_answer_is_read_as_far_as_it_goes_never_a_panic() {
        let q = query(7, "registry.test.", Family::A).unwrap();
        let two = response(
            &q,
            0x8180,
            &[(1, 1, &[10, 0, 0, 1]), (1, 1, &[10, 0, 0, 2])],
            0,
        );
        let question_end = q.len() - 11;
        for cut in 0..two.len() {
            let read = super::answer(&two[..cut], &q, Family::A);
            if cut < question_end {
                // Without the whole header and question it is nobody's answer.
                assert!(read.is_err(), "cut at {cut}");
                continue;
            }
            let read = read.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(read.damaged, cut < two.len(), "cut at {cut}");
            let whole = usize::from(cut >= question_end + 16) + usize::from(cut == two.len());
            assert_eq!(read.addresses.len(), whole, "cut at {cut}");
        }
        // A record claiming more data than there is; more than one question; a pointer loop.
        let mut long = two.clone();
        let at = long.len() - 5;
        long[at] = 0xff;
        assert!(super::answer(&long, &q, Family::A).unwrap().damaged);
        let mut questions = two.clone();
        questions[5] = 2;
        assert!(super::answer(&questions, &q, Family::A).unwrap().damaged);
        let mut looped = two[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(super::answer(&looped, &q, Family::A).is_err());
        // A question of many short labels (within 255 bytes) is still read.
        let many = format!("{}example.", "a.".repeat(100));
        let mq = query(9, &many, Family::A).unwrap();
        assert!(super::answer(&response(&mq, 0x8180, &[], 0), &mq, Family::A).is_ok());
    }
}
