"""Currencies and amounts: ISO 4217 codes and conversion to Stripe's minor units."""

from __future__ import annotations

import difflib
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Active ISO 4217 codes (funds and precious metals left out).
_ISO_4217_CODES = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR
    KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK
    MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR
    SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS
    UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL
    """
ISO_4217 = frozenset(_ISO_4217_CODES.split())
# Stripe's zero-decimal and three-decimal currencies; every other currency has two decimals.
_ZERO = "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF"
ZERO_DECIMAL = frozenset(_ZERO.split())
_THREE = "BHD JOD KWD OMR TND"
THREE_DECIMAL = frozenset(_THREE.split())


# Offered first when a code is misspelled.
COMMON = ("USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "SEK", "NOK", "DKK", "NZD", "SGD")


def suggest_common(code: str) -> bool:
    """True when a misspelled code is close to one of the common currencies."""
    return bool(difflib.get_close_matches(code.upper(), COMMON, n=1, cutoff=0.6))


def is_currency(code: str) -> bool:
    return code.upper() in ISO_4217


def exponent(currency: str) -> int:
    """Number of decimals of the currency's minor unit, as Stripe counts them."""
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def parse_decimal(value: object) -> Decimal | None:
    """A finite number from a JSON/YAML value or a text such as "1,200.50"; None otherwise."""
    number: Decimal | None = None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip().replace(",", "").replace("_", "").replace(" ", "")
        try:
            number = Decimal(text) if text else None
        except InvalidOperation:
            number = None
    return number if number is not None and number.is_finite() else None


def to_minor_units(amount: Decimal, currency: str) -> int:
    """`amount` in major units (e.g. 49.99 USD) as Stripe minor units (4999), rounded half up."""
    scaled = amount.scaleb(exponent(currency))
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def has_more_decimals_than(amount: Decimal, currency: str) -> bool:
    scaled = amount.scaleb(exponent(currency))
    return scaled != scaled.to_integral_value()


def format_minor(amount: int, currency: str) -> str:
    """4999, "usd" -> "49.99 USD"."""
    places = exponent(currency)
    value = Decimal(amount).scaleb(-places)
    return f"{value:,.{places}f} {currency.upper()}"
