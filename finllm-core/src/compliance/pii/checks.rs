//! Check digits and structural rules of the identifiers the detector knows.
//!
//! Every function takes the identifier in its compact form (ASCII, no separators) and never panics,
//! whatever the input: the detector calls them on arbitrary candidates cut from user text.

/// Luhn (ISO/IEC 7812-1) check over ASCII digits; false for anything that is not all digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.len() < 2 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &c)| {
            let d = u32::from(c - b'0');
            if i % 2 == 1 {
                let twice = d * 2;
                if twice > 9 {
                    twice - 9
                } else {
                    twice
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The GB 11643-1999 (ISO 7064 MOD 11-2) check character for the first 17 digits of a Chinese
/// resident identity number: `0`-`9` or `X`.
pub fn cn_id_check_char(first17: &[u8]) -> Option<u8> {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    if first17.len() != 17 || !first17.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = first17.iter().zip(WEIGHTS).map(|(&c, w)| u32::from(c - b'0') * w).sum();
    // `sum % 11` is < 11, so the index is in range.
    Some(CHECK[(sum % 11) as usize])
}

/// First two digits of a resident ID: a province-level division (GB/T 2260), or 81/82/83 for the
/// residence permits of Hong Kong, Macao and Taiwan residents.
pub fn cn_province_code_valid(two: &[u8]) -> bool {
    if two.len() != 2 || !two.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let code = u32::from(two[0] - b'0') * 10 + u32::from(two[1] - b'0');
    matches!(code, 11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81..=83)
}

/// A full 18-character resident identity number: plausible region, a real birth date not in the
/// future and no earlier than 1900, and the MOD 11-2 check character (`x` is accepted as `X`).
pub fn cn_id_valid(id: &[u8]) -> bool {
    if id.len() != 18 || !cn_province_code_valid(&id[..2]) {
        return false;
    }
    let Some(expected) = cn_id_check_char(&id[..17]) else {
        return false;
    };
    if id[17].to_ascii_uppercase() != expected {
        return false;
    }
    let year = parse_digits(&id[6..10]);
    let month = parse_digits(&id[10..12]);
    let day = parse_digits(&id[12..14]);
    match (year, month, day) {
        (Some(y), Some(m), Some(d)) => (1900..=current_year()).contains(&y) && date_valid(y, m, d),
        _ => false,
    }
}

/// Whether `y-m-d` is a real Gregorian calendar date.
pub fn date_valid(y: u32, m: u32, d: u32) -> bool {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// The current UTC year from the system clock (2100 if the clock is before 1970 or unreadable,
/// so a broken clock never rejects real birth dates).
fn current_year() -> u32 {
    let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
        return 2100;
    };
    // Days to civil year (H. Hinnant's algorithm, restricted to dates after 1970).
    let days = elapsed.as_secs() / 86_400 + 719_468;
    let era = days / 146_097;
    let doe = days % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let year = yoe + era * 400 + u64::from(mp >= 10);
    u32::try_from(year).unwrap_or(2100)
}

fn parse_digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |acc, &c| acc * 10 + u32::from(c - b'0')))
}

/// The 31 characters of the GB 32100-2015 alphabet: digits and capitals without I, O, Z, S, V.
pub const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

fn uscc_value(c: u8) -> Option<u32> {
    USCC_ALPHABET
        .iter()
        .position(|&a| a == c)
        .and_then(|p| u32::try_from(p).ok())
}

/// The GB 32100-2015 check character for the first 17 characters of a unified social credit code.
pub fn uscc_check_char(first17: &[u8]) -> Option<u8> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    let mut weight = 1u32; // 3^i mod 31
    for &c in first17 {
        sum += uscc_value(c)? * weight;
        weight = weight * 3 % 31;
    }
    let check = (31 - sum % 31) % 31;
    Some(USCC_ALPHABET[check as usize])
}

/// A full 18-character unified social credit code: registration department and organisation type
/// from GB 32100, a six-digit administrative region with a valid province, and the check character.
pub fn uscc_valid(code: &[u8]) -> bool {
    if code.len() != 18 {
        return false;
    }
    let department_ok = matches!(code[0], b'1'..=b'9' | b'A' | b'N' | b'Y');
    let org_type_ok = matches!(code[1], b'1'..=b'5' | b'9');
    let region_ok = code[2..8].iter().all(u8::is_ascii_digit) && cn_province_code_valid(&code[2..4]);
    department_ok && org_type_ok && region_ok && uscc_check_char(&code[..17]) == Some(code[17])
}

/// Whether characters 9-17 of a USCC carry a valid GB 11714 organisation code (true of codes
/// issued to organisations; a stronger signal than the USCC check alone).
pub fn uscc_org_code_valid(code: &[u8]) -> bool {
    const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
    if code.len() != 18 {
        return false;
    }
    let org = &code[8..17];
    let mut sum = 0u32;
    for (&c, w) in org[..8].iter().zip(WEIGHTS) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        sum += v * w;
    }
    let expected = match 11 - sum % 11 {
        10 => b'X',
        11 => b'0',
        n => b'0' + n as u8, // n <= 9 here
    };
    org[8] == expected
}

/// IBAN length of a country (ISO 13616 registry), for the countries banks meet most.
pub fn iban_length(country: &[u8]) -> Option<usize> {
    #[rustfmt::skip]
    const LENGTHS: &[(&[u8; 2], usize)] = &[
        (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20), (b"BE", 16),
        (b"BG", 22), (b"BH", 22), (b"BR", 29), (b"BY", 28), (b"CH", 21), (b"CR", 22), (b"CY", 28),
        (b"CZ", 24), (b"DE", 22), (b"DK", 18), (b"DO", 28), (b"EE", 20), (b"EG", 29), (b"ES", 24),
        (b"FI", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22), (b"GE", 22), (b"GI", 23), (b"GL", 18),
        (b"GR", 27), (b"GT", 28), (b"HR", 21), (b"HU", 28), (b"IE", 22), (b"IL", 23), (b"IQ", 23),
        (b"IS", 26), (b"IT", 27), (b"JO", 30), (b"KW", 30), (b"KZ", 20), (b"LB", 28), (b"LC", 32),
        (b"LI", 21), (b"LT", 20), (b"LU", 20), (b"LV", 21), (b"MC", 27), (b"MD", 24), (b"ME", 22),
        (b"MK", 19), (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NL", 18), (b"NO", 15), (b"PK", 24),
        (b"PL", 28), (b"PS", 29), (b"PT", 25), (b"QA", 29), (b"RO", 24), (b"RS", 22), (b"SA", 24),
        (b"SC", 31), (b"SE", 24), (b"SI", 19), (b"SK", 24), (b"SM", 27), (b"TN", 24), (b"TR", 26),
        (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20),
    ];
    LENGTHS.iter().find(|(c, _)| c.as_slice() == country).map(|&(_, n)| n)
}

/// A compact IBAN (upper-case, no spaces): known country, its exact length, check digits 02-98 and
/// ISO 7064 MOD 97-10 remainder 1.
pub fn iban_valid(iban: &[u8]) -> bool {
    if iban.len() < 5 || iban_length(&iban[..2]) != Some(iban.len()) {
        return false;
    }
    if !iban[2..4].iter().all(u8::is_ascii_digit) || !matches!(parse_digits(&iban[2..4]), Some(2..=98)) {
        return false;
    }
    let mut remainder = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        remainder = match c {
            b'0'..=b'9' => (remainder * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (remainder * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    remainder == 1
}

/// US social security number rules (SSA): area not 000, 666 or 900-999; group not 00; serial not
/// 0000; and not one of the numbers publicly known to be void (078-05-1120 and friends).
pub fn ssn_valid(digits: &[u8]) -> bool {
    if digits.len() != 9 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let (Some(area), Some(group), Some(serial)) = (
        parse_digits(&digits[..3]),
        parse_digits(&digits[3..5]),
        parse_digits(&digits[5..]),
    ) else {
        return false;
    };
    const VOID: [&[u8; 9]; 3] = [b"078051120", b"219099999", b"457555462"];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !VOID.iter().any(|v| v[..] == *digits)
}

/// Payment card networks recognised by their issuer identification number (IIN) prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardNetwork {
    Visa,
    Mastercard,
    Amex,
    UnionPay,
    Discover,
    Jcb,
    DinersClub,
    Maestro,
    Mir,
}

impl CardNetwork {
    pub fn name(self) -> &'static str {
        match self {
            CardNetwork::Visa => "Visa",
            CardNetwork::Mastercard => "Mastercard",
            CardNetwork::Amex => "American Express",
            CardNetwork::UnionPay => "UnionPay",
            CardNetwork::Discover => "Discover",
            CardNetwork::Jcb => "JCB",
            CardNetwork::DinersClub => "Diners Club",
            CardNetwork::Maestro => "Maestro",
            CardNetwork::Mir => "Mir",
        }
    }
}

/// The network whose IIN range and card lengths fit these digits (the Luhn check is separate).
pub fn card_network(digits: &[u8]) -> Option<CardNetwork> {
    if !digits.iter().all(u8::is_ascii_digit) || digits.len() < 6 {
        return None;
    }
    let len = digits.len();
    let prefix = |n: usize| parse_digits(&digits[..n]).unwrap_or(0);
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    if matches!(p2, 34 | 37) {
        (len == 15).then_some(CardNetwork::Amex)
    } else if p1 == 4 {
        matches!(len, 13 | 16 | 19).then_some(CardNetwork::Visa)
    } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        (len == 16).then_some(CardNetwork::Mastercard)
    } else if (2200..=2204).contains(&p4) {
        (16..=19).contains(&len).then_some(CardNetwork::Mir)
    } else if (3528..=3589).contains(&p4) {
        (16..=19).contains(&len).then_some(CardNetwork::Jcb)
    } else if (300..=305).contains(&p3) || p4 == 3095 || matches!(p2, 36 | 38 | 39) {
        (14..=19).contains(&len).then_some(CardNetwork::DinersClub)
    } else if p2 == 62 || p2 == 81 {
        (16..=19).contains(&len).then_some(CardNetwork::UnionPay)
    } else if p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) {
        (16..=19).contains(&len).then_some(CardNetwork::Discover)
    } else if matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761..=6763) {
        (12..=19).contains(&len).then_some(CardNetwork::Maestro)
    } else {
        None
    }
}

/// An 11-digit mainland mobile number with a prefix that carriers actually allocate.
pub fn cn_mobile_valid(digits: &[u8]) -> bool {
    if digits.len() != 11 || !digits.iter().all(u8::is_ascii_digit) || digits[0] != b'1' {
        return false;
    }
    let p = u32::from(digits[1] - b'0') * 10 + u32::from(digits[2] - b'0');
    matches!(p, 30..=39 | 45..=49 | 50..=53 | 55..=59 | 62 | 65..=67 | 70..=78 | 80..=89 | 90..=93 | 95..=99)
}

/// Length of a mainland area code at the start of `digits`: 3 for `010` and `02x`, 4 for `0[3-9]xx`.
pub fn cn_area_code_len(digits: &[u8]) -> Option<usize> {
    if digits.len() < 3 || digits[0] != b'0' || !digits[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    match digits[1] {
        b'1' if digits[2] == b'0' => Some(3),
        b'2' => Some(3),
        b'3'..=b'9' if digits.len() >= 4 && digits[3].is_ascii_digit() => Some(4),
        _ => None,
    }
}

/// A mainland landline: area code, then a 7- or 8-digit subscriber number not starting with 0 or
/// 1 (8 digits after the three-digit codes of the large cities).
pub fn cn_landline_valid(area: &[u8], subscriber: &[u8]) -> bool {
    let Some(area_len) = cn_area_code_len(area) else {
        return false;
    };
    if area_len != area.len() || !subscriber.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let len_ok = if area_len == 3 {
        subscriber.len() == 8
    } else {
        matches!(subscriber.len(), 7 | 8)
    };
    len_ok && matches!(subscriber.first(), Some(b'2'..=b'9'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_vectors() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(!luhn_valid(b"41111111111111a1"));
        assert!(!luhn_valid(b""));
    }

    #[test]
    fn cn_id_vectors() {
        assert!(cn_id_valid(b"11010519491231002X"));
        assert!(cn_id_valid(b"11010519491231002x"));
        assert!(!cn_id_valid(b"110105194912310021"));
        // Valid check digit but 1949-02-30 does not exist.
        let mut bad_date = *b"11010519490230000?";
        bad_date[17] = cn_id_check_char(&bad_date[..17]).unwrap();
        assert!(!cn_id_valid(&bad_date));
        // Valid check digit but province 99 does not exist.
        let mut bad_region = *b"99010519491231002?";
        bad_region[17] = cn_id_check_char(&bad_region[..17]).unwrap();
        assert!(!cn_id_valid(&bad_region));
    }

    #[test]
    fn uscc_vectors() {
        assert!(uscc_valid(b"91350100M000100Y43"));
        assert!(uscc_org_code_valid(b"91350100M000100Y43"));
        assert!(!uscc_valid(b"91350100M000100Y44"));
        assert!(!uscc_valid(b"91350100M00010OY43"), "O is not in the alphabet");
    }

    #[test]
    fn iban_vectors() {
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(!iban_valid(b"GB82WEST12345698765433"));
        assert!(!iban_valid(b"GB82WEST1234569876543"), "wrong length for GB");
        assert!(!iban_valid(b"ZZ82WEST12345698765432"), "unknown country");
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn_valid(b"123456789"));
        for bad in [
            b"000123456",
            b"666123456",
            b"900123456",
            b"123006789",
            b"123450000",
            b"078051120",
        ] {
            assert!(!ssn_valid(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn networks_and_phones() {
        assert_eq!(card_network(b"4111111111111111"), Some(CardNetwork::Visa));
        assert_eq!(card_network(b"5500000000000004"), Some(CardNetwork::Mastercard));
        assert_eq!(card_network(b"378282246310005"), Some(CardNetwork::Amex));
        assert_eq!(card_network(b"6222021234567890123"), Some(CardNetwork::UnionPay));
        assert_eq!(card_network(b"1234567890123456"), None);
        assert!(cn_mobile_valid(b"13800138000"));
        assert!(!cn_mobile_valid(b"12345678901"));
        assert!(!cn_landline_valid(b"010", b"12345678"));
        assert!(cn_landline_valid(b"010", b"62345678"));
        assert!(cn_landline_valid(b"0755", b"2345678"));
        assert!(!cn_landline_valid(b"0155", b"2345678"));
    }

    #[test]
    fn current_year_is_sane() {
        let y = current_year();
        assert!((2024..2100).contains(&y), "{y}");
    }
}
