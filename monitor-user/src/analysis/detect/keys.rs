//! What a field's name says about its value: the context that turns a date into a birth date,
//! a string into a person's name or address, a bare number into a phone number or SSN, and
//! that stops an order number from passing for a card.

/// Context from a field's key (and its parent's), for the value under it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub phone: bool,
    pub ssn: bool,
    /// A payment card field: short (12-13 digit) card numbers are accepted here.
    pub card: bool,
    pub birth_date: bool,
    pub person_name: bool,
    pub street_address: bool,
    pub password: bool,
    pub aws_secret: bool,
    /// Ids, versions, timestamps: digits here are not cards, phones or addresses.
    pub not_personal_number: bool,
    /// The key makes its object a record about a person (see [`is_personal_key`]).
    pub personal: bool,
    /// The key is a plain `name`: a person's name only beside personal keys, and not already
    /// one by its parent.
    pub plain_name: bool,
    /// Version strings: dotted numbers here are not IP addresses.
    pub version: bool,
}

/// A key lower-cased with separators removed: `dateOfBirth`, `date_of_birth` and
/// `Date-Of-Birth` all become `dateofbirth`. Keys longer than 48 bytes carry no context.
#[must_use]
pub fn normalize(key: &[u8], buf: &mut [u8; 48]) -> usize {
    let mut n = 0;
    for &b in key {
        if matches!(b, b'_' | b'-' | b'.' | b' ' | b'$' | b'@') {
            continue;
        }
        if n == buf.len() || !b.is_ascii_alphanumeric() {
            return 0;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    n
}

fn is_one_of(key: &[u8], names: &[&str]) -> bool {
    names.iter().any(|n| n.as_bytes() == key)
}

fn contains(key: &[u8], part: &str) -> bool {
    key.windows(part.len()).any(|w| w == part.as_bytes())
}

const PERSON_PARENTS: &[&str] = &[
    "customer",
    "user",
    "person",
    "contact",
    "recipient",
    "sender",
    "patient",
    "employee",
    "owner",
    "billing",
    "shipping",
    "holder",
    "cardholder",
    "passenger",
    "member",
    "buyer",
    "seller",
    "account",
    "accountholder",
    "profile",
    "client",
    "applicant",
    "beneficiary",
    "payer",
    "payee",
    "guest",
    "traveler",
    "traveller",
    "driver",
    "tenant",
    "student",
    "candidate",
    "emergencycontact",
    "spouse",
    "parent",
    "guardian",
    "attendee",
    "subscriber",
    "consumer",
    "individual",
    "lead",
    "billto",
    "shipto",
    "author",
    "requester",
    "reporter",
    "assignee",
    "signer",
    "borrower",
    "insured",
];

const NAME_KEYS: &[&str] = &[
    "firstname",
    "lastname",
    "fullname",
    "givenname",
    "familyname",
    "surname",
    "middlename",
    "forename",
    "fname",
    "lname",
    "personname",
    "legalname",
    "nameoncard",
    "cardholdername",
    "holdername",
    "accountholdername",
    "customername",
    "contactname",
    "recipientname",
    "sendername",
    "patientname",
    "employeename",
    "billingname",
    "shippingname",
    "payername",
    "payeename",
    "beneficiaryname",
    "passengername",
    "membername",
    "guestname",
    "travelername",
    "drivername",
    "clientname",
    "applicantname",
    "ownername",
    "username2",
    "realname",
    "maidenname",
    "mothersmaidenname",
    "fathersname",
    "emergencycontactname",
    "spousename",
    "nickname",
];

const ADDRESS_KEYS: &[&str] = &[
    "address",
    "streetaddress",
    "street",
    "address1",
    "address2",
    "addressline1",
    "addressline2",
    "line1",
    "line2",
    "addr",
    "addr1",
    "addr2",
    "street1",
    "street2",
    "homeaddress",
    "mailingaddress",
    "billingaddress",
    "shippingaddress",
    "residentialaddress",
    "postaladdress",
    "fulladdress",
    "residence",
    "homeaddr",
    "physicaladdress",
    "deliveryaddress",
    "permanentaddress",
    "currentaddress",
    "streetline1",
    "streetline2",
    "streetname",
    "addressstreet",
];

const ADDRESS_PARENTS: &[&str] = &[
    "address",
    "billingaddress",
    "shippingaddress",
    "homeaddress",
    "mailingaddress",
    "billing",
    "shipping",
    "deliveryaddress",
    "residence",
    "location",
    "postaladdress",
    "billto",
    "shipto",
];

/// Keys that make the object holding them a record about a person: a plain `name` beside
/// them is that person's name.
#[must_use]
pub fn is_personal_key(key: &[u8]) -> bool {
    let mut kb = [0u8; 48];
    let n = normalize(key, &mut kb);
    let k = &kb[..n];
    is_one_of(
        k,
        &[
            "email",
            "mail",
            "emailaddress",
            "phone",
            "phonenumber",
            "mobile",
            "dob",
            "birthdate",
            "dateofbirth",
            "birthday",
            "ssn",
            "address",
            "streetaddress",
            "firstname",
            "lastname",
            "surname",
            "gender",
            "sex",
            "nationality",
            "passport",
            "residence",
            "homeaddress",
        ],
    )
}

/// Whether a key is the ambiguous `name`: a person's name only beside personal keys.
#[must_use]
pub fn is_plain_name(key: &[u8]) -> bool {
    key.eq_ignore_ascii_case(b"name")
}

/// Memoised [`hints`], direct-mapped: API traffic repeats the same keys in every message,
/// and this is looked up for every value of every JSON document.
#[derive(Clone, Debug)]
pub struct HintCache {
    slots: Vec<(u64, Hints)>,
}

/// A power of two, so that a slot is a mask away, not a division.
const HINT_SLOTS: usize = 1024;

impl Default for HintCache {
    fn default() -> Self {
        Self {
            slots: vec![(0, Hints::default()); HINT_SLOTS],
        }
    }
}

impl HintCache {
    /// [`hints`] for `key` under `parent`, from the cache when seen before.
    pub fn get(&mut self, key: &[u8], parent: Option<&[u8]>) -> Hints {
        let parent = parent.unwrap_or_default();
        // A 64-bit hash identifies the pair: a collision (odds 2^-64 per lookup) could only
        // mix up two keys' context.
        let id = mix(mix(0x243f_6a88_85a3_08d3, key) ^ 0xff, parent) | 1;
        // Two ways per set: two hot keys that share a set do not evict each other on every
        // document.
        let set = ((id >> 40) as usize & (HINT_SLOTS / 2 - 1)) * 2;
        let ways = &mut self.slots[set..set + 2];
        if ways[0].0 == id {
            return ways[0].1;
        }
        if ways[1].0 != id {
            ways[1] = (id, hints(key, Some(parent)));
        }
        // Most recently used first.
        ways.swap(0, 1);
        ways[0].1
    }
}

/// Word-at-a-time hash of `bytes` into `seed` (short keys: a handful of multiplies).
fn mix(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    h = (h ^ tail_word(chunks.remainder())).wrapping_mul(K);
    h ^ (h >> 32)
}

/// The up to 7 bytes of `rest` as one little-endian word, from two overlapping loads: a
/// byte-wise copy into a buffer then a word load stalls on store forwarding.
fn tail_word(rest: &[u8]) -> u64 {
    let n = rest.len();
    let le32 = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let le16 = |b: &[u8]| u64::from(u16::from_le_bytes([b[0], b[1]]));
    match n {
        0 => 0,
        1 => u64::from(rest[0]),
        2..4 => le16(rest) | (le16(&rest[n - 2..]) >> ((4 - n) * 8)) << 16,
        _ => le32(rest) | (le32(&rest[n - 4..]) >> ((8 - n) * 8)) << 32,
    }
}

#[cfg(test)]
#[test]
fn tail_word_is_exact() {
    for n in 0..8 {
        let bytes: Vec<u8> = (1..=n as u8).collect();
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&bytes);
        assert_eq!(tail_word(&bytes), u64::from_le_bytes(w), "{n} bytes");
    }
}

/// Context for a value under `key`, inside an object under `parent` (both raw). Hot callers
/// go through [`HintCache`].
#[must_use]
#[expect(
    clippy::field_reassign_with_default,
    reason = "each flag reads the ones set before it"
)]
pub fn hints(key: &[u8], parent: Option<&[u8]>) -> Hints {
    let mut kb = [0u8; 48];
    let n = normalize(key, &mut kb);
    let k = &kb[..n];
    let mut pb = [0u8; 48];
    let pn = parent.map_or(0, |p| normalize(p, &mut pb));
    let p = &pb[..pn];
    if k.is_empty() {
        return Hints::default();
    }
    let mut h = Hints::default();
    h.phone = is_one_of(
        k,
        &[
            "phone",
            "phonenumber",
            "mobile",
            "mobilenumber",
            "mobilephone",
            "cell",
            "cellphone",
            "tel",
            "telephone",
            "telephonenumber",
            "fax",
            "faxnumber",
            "msisdn",
            "contactnumber",
            "homephone",
            "workphone",
            "officephone",
            "phoneno",
            "mobileno",
            "whatsapp",
            "sms",
        ],
    ) || (contains(k, "phone") && !contains(k, "phonecode") && !contains(k, "verified"));
    h.card = (contains(k, "card") && !contains(k, "last4") && !contains(k, "cardholder"))
        || is_one_of(
            k,
            &[
                "pan",
                "cc",
                "ccnumber",
                "ccnum",
                "creditcard",
                "cardno",
                "accountnumber",
            ],
        )
        || (is_one_of(k, &["number", "num", "no"])
            && (contains(p, "card") || p == b"payment" || p == b"paymentmethod"));
    h.ssn = is_one_of(
        k,
        &[
            "ssn",
            "socialsecuritynumber",
            "socialsecurity",
            "socialsecurityno",
            "ssnumber",
            "usssn",
        ],
    ) || contains(k, "ssn");
    h.birth_date = is_one_of(k, &["dob", "bday", "born", "bornon", "birth", "birthday"])
        || contains(k, "birthdate")
        || contains(k, "dateofbirth")
        || contains(k, "birthdt");
    let parent_person = is_one_of(p, PERSON_PARENTS);
    h.person_name = is_one_of(k, NAME_KEYS)
        || (is_one_of(
            k,
            &["name", "first", "last", "given", "family", "middle", "full"],
        ) && parent_person);
    let address_key_excluded = [
        "email", "ip", "mac", "url", "web", "wallet", "server", "remote", "host", "btc", "eth",
    ]
    .iter()
    .any(|x| contains(k, x));
    h.street_address = !address_key_excluded
        && (is_one_of(k, ADDRESS_KEYS)
            || (is_one_of(k, &["line1", "line2", "street", "streetname", "address"])
                && is_one_of(p, ADDRESS_PARENTS)));
    h.password = is_one_of(
        k,
        &[
            "password",
            "passwd",
            "pwd",
            "pass",
            "passphrase",
            "userpassword",
            "newpassword",
            "oldpassword",
            "currentpassword",
            "confirmpassword",
            "passwordconfirmation",
            "pin",
            "clientsecret",
            "secretkey",
            "privatekey",
        ],
    ) || contains(k, "password");
    h.aws_secret = contains(k, "secretaccesskey") || is_one_of(k, &["awssecret", "awssecretkey"]);
    h.not_personal_number = is_one_of(
        k,
        &[
            "id",
            "imei",
            "isbn",
            "ean",
            "upc",
            "gtin",
            "sku",
            "serial",
            "serialnumber",
            "orderid",
            "ordernumber",
            "orderno",
            "trackingnumber",
            "trackingid",
            "invoice",
            "invoiceid",
            "invoicenumber",
            "reference",
            "referenceid",
            "ref",
            "txid",
            "transactionid",
            "requestid",
            "traceid",
            "spanid",
            "timestamp",
            "ts",
            "epoch",
            "time",
            "createdat",
            "updatedat",
            "date",
            "version",
            "build",
            "checksum",
            "hash",
            "nonce",
            "count",
            "amount",
            "total",
            "price",
            "quantity",
            "size",
            "length",
            "offset",
            "limit",
            "page",
            "port",
            "pid",
            "uid",
            "gid",
            "accountid",
            "customerid",
            "userid",
            "productid",
            "itemid",
            "sessionid",
            "deviceid",
        ],
    ) || k.ends_with(b"id") && !h.phone && !h.ssn
        || contains(k, "timestamp")
        || contains(k, "epoch");
    h.version = contains(k, "version")
        || k == b"ver"
        || k == b"v"
        || contains(k, "useragent")
        || k == b"ua";
    h.personal = is_personal_key(key);
    h.plain_name = is_plain_name(key) && !h.person_name;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_normalize() {
        for k in [
            "dateOfBirth",
            "date_of_birth",
            "Date-Of-Birth",
            "DOB",
            "birth_date",
            "birthDate",
        ] {
            assert!(hints(k.as_bytes(), None).birth_date, "{k}");
        }
        for k in ["first_name", "lastName", "FullName", "cardholder_name"] {
            assert!(hints(k.as_bytes(), None).person_name, "{k}");
        }
        assert!(hints(b"name", Some(b"customer")).person_name);
        assert!(!hints(b"name", Some(b"product")).person_name);
        assert!(!hints(b"name", None).person_name);
        assert!(hints(b"line1", Some(b"billing_address")).street_address);
        assert!(hints(b"street_address", None).street_address);
        assert!(!hints(b"email_address", None).street_address);
        assert!(!hints(b"ip_address", None).street_address);
        assert!(hints(b"mobile_number", None).phone);
        assert!(hints(b"order_id", None).not_personal_number);
        assert!(hints(b"app_version", None).version);
        assert!(hints(b"ssn", None).ssn);
        assert!(hints(b"new_password", None).password);
        assert!(hints(b"aws_secret_access_key", None).aws_secret);
    }
}
