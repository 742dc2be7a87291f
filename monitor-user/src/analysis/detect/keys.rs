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

/// Context for a value under `key`, inside an object under `parent` (both raw).
#[must_use]
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
