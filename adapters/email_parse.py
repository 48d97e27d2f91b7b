"""Reading an email, with pure functions: who sent it (and can we believe it), which thread it
belongs to, what the person wrote (without quoted history or signature), and whether it is
machine mail that must never be answered. Writing a reply's headers lives here too.

Standard library only: `email.parser.BytesParser(policy=email.policy.default)`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP
from email.policy import default as default_policy
from email.utils import format_datetime
from html.parser import HTMLParser

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
MAX_REFERENCES = 20


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    message_id: str  # "<…>"; made up from the content when the header is missing
    sender: str | None  # the one From address, lowercased; None unless exactly one
    sender_name: str
    subject: str
    in_reply_to: str | None
    references: tuple[str, ...]
    thread: str  # the conversation key: the thread's root Message-ID
    text: str  # what the person wrote: no quoted history, no signature
    automated: str | None  # why this is machine mail (never answered); None for a person
    verified_by: str | None  # how our receiving server vouched for the sender, e.g. "dmarc=pass"

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2] if self.sender else ""


def parse_bytes(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def read(raw: bytes, *, own_address: str = "", authserv_id: str = "") -> ParsedEmail:
    """Everything the channel needs from one message. `authserv_id` names our own receiving
    server in Authentication-Results; without it no sender counts as verified."""
    message = parse_bytes(raw)
    own_id = first_message_id(header(message, "Message-ID"))
    if own_id is None:
        own_id = f"<{hashlib.sha256(raw).hexdigest()[:32]}@threadline.invalid>"
    references = tuple(message_ids(header(message, "References")))
    in_reply_to = first_message_id(header(message, "In-Reply-To"))
    sender, name = from_address(message)
    return ParsedEmail(
        message_id=own_id,
        sender=sender,
        sender_name=name,
        subject=header(message, "Subject").strip(),
        in_reply_to=in_reply_to,
        references=references,
        thread=thread_root(references, in_reply_to, own_id),
        text=body_text(message),
        automated=automated(message, sender, own_address),
        verified_by=verified(message, authserv_id, sender.rpartition("@")[2])
        if sender and authserv_id else None,
    )


def header(message: EmailMessage, name: str) -> str:
    """One header's value as text ("" when absent or unreadable), whitespace unfolded."""
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError):  # a header the policy cannot parse
        value = None
    if value is None:
        return ""
    return " ".join(str(value).split())


def all_headers(message: EmailMessage, name: str) -> list[str]:
    try:
        values = message.get_all(name) or []
    except (ValueError, IndexError, TypeError):
        return []
    return [" ".join(str(v).split()) for v in values]


def message_ids(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value or "")


def first_message_id(value: str) -> str | None:
    ids = message_ids(value)
    return ids[0] if ids else None


def thread_root(references: Sequence[str], in_reply_to: str | None, own_id: str) -> str:
    """One email thread is one session: first of References, else In-Reply-To, else itself."""
    if references:
        return references[0]
    return in_reply_to or own_id


def from_address(message: EmailMessage) -> tuple[str | None, str]:
    """The sender's address, lowercased, when From names exactly one; and the display name."""
    try:
        values = message.get_all("From") or []
        # The parsed header, not its decoded text: an encoded display name could hold commas
        # or an address of its own.
        addresses: tuple[Address, ...] = (
            tuple(getattr(values[0], "addresses", ())) if len(values) == 1 else ())
    except (ValueError, IndexError, TypeError):
        return None, ""
    if len(addresses) != 1 or "@" not in addresses[0].addr_spec:
        return None, ""
    return addresses[0].addr_spec.strip().lower(), addresses[0].display_name.strip()


# -- machine mail ---------------------------------------------------------------------------

_BULK_PRECEDENCE = {"bulk", "list", "junk"}


def automated(message: EmailMessage, sender: str | None, own_address: str = "") -> str | None:
    """Why this mail must get no answer (auto-reply, bounce, list mail), or None."""
    auto_submitted = header(message, "Auto-Submitted").lower()
    if auto_submitted and auto_submitted.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto_submitted}"
    precedence = header(message, "Precedence").lower()
    if precedence in _BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    if header(message, "List-Id"):
        return "mailing list (List-Id)"
    for name in ("X-Autoreply", "X-Autorespond"):
        if header(message, name):
            return name
    return_paths = all_headers(message, "Return-Path")
    if return_paths and return_paths[0].replace(" ", "") == "<>":
        return "null return path"
    if message.get_content_type() == "multipart/report":
        return "delivery or disposition report"
    if sender is not None:
        local = sender.partition("@")[0]
        if local in {"mailer-daemon", "postmaster"}:
            return f"{local} sender"
        if own_address and sender == own_address.lower():
            return "our own address"
    return None


# -- authentication -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthResult:
    method: str  # "dkim", "dmarc", "spf", …
    result: str  # "pass", "fail", "none", …
    properties: dict[str, str]  # "header.d" -> "acme.com", …


def _strip_comments(value: str) -> str:
    """Drop RFC 5322 comments (nested parentheses) outside quoted strings."""
    out, depth, quoted, escaped = [], 0, False, False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if quoted:
            quoted = char != '"'
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            quoted = char == '"'
            out.append(char)
    return "".join(out)


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


_PAIR = re.compile(r'([A-Za-z0-9._-]+(?:/[0-9]+)?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s"]+)')


def parse_authentication_results(value: str) -> tuple[str, list[AuthResult]]:
    """An Authentication-Results header (RFC 8601): its authserv-id and its results."""
    parts = _split_outside_quotes(_strip_comments(value), ";")
    head = parts[0].split()
    authserv_id = head[0].lower() if head else ""
    results = []
    for part in parts[1:]:
        pairs = [(k.lower(), v.strip('"')) for k, v in _PAIR.findall(part)]
        if not pairs:
            continue  # "none"
        method, result = pairs[0]
        results.append(AuthResult(method.partition("/")[0], result.lower(),
                                  {k: v for k, v in pairs[1:]}))
    return authserv_id, results


def authentication_results(message: EmailMessage, authserv_id: str) -> list[AuthResult]:
    """The results our own receiving server recorded.

    Only a header carrying our authserv-id counts: anyone can write an Authentication-Results
    header into the mail they send. Our server adds exactly one, on top (RFC 8601 §5 has it
    remove incoming ones that claim its id); when several claim our id, one was written by
    the sender, and since we cannot tell which, none counts.
    """
    ours = authserv_id.strip().lower()
    found = [results for server, results in map(parse_authentication_results,
                                                 all_headers(message, "Authentication-Results"))
             if server == ours]
    return found[0] if len(found) == 1 else []


def _domain_of(value: str) -> str:
    return value.rpartition("@")[2].strip().strip(".").lower()


def aligned(signer: str, from_domain: str) -> bool:
    """DMARC's relaxed alignment: the signing domain is the From domain or a parent of it."""
    signer, from_domain = _domain_of(signer), from_domain.lower()
    return bool(signer) and "." in signer and (
        from_domain == signer or from_domain.endswith("." + signer))


def verified(message: EmailMessage, authserv_id: str, from_domain: str) -> str | None:
    """How our server vouched for the From domain ("dmarc=pass", …), or None if it did not."""
    if not from_domain:
        return None
    results = authentication_results(message, authserv_id)
    for result in results:
        if result.method == "dmarc" and result.result == "pass":
            # A pass vouches for the domain it names; one that names none vouches for none.
            checked = result.properties.get("header.from")
            if checked is not None and _domain_of(checked) == from_domain.lower():
                return "dmarc=pass"
    for result in results:
        if result.method == "dkim" and result.result == "pass":
            for prop in ("header.d", "header.i"):
                signer = result.properties.get(prop)
                if signer and aligned(signer, from_domain):
                    return f"dkim=pass {prop}={_domain_of(signer)}"
    return None


# -- the text a person wrote ----------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "head", "title", "blockquote"}
_QUOTE_CLASSES = {"gmail_quote", "gmail_signature", "moz-cite-prefix", "moz-signature"}
_BLOCK_TAGS = {"p", "div", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
               "pre", "section", "article", "header", "footer", "hr"}
_VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr",
              "source", "embed", "param", "track"}


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0  # depth inside an element whose content is not the person's words

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        void = tag in _VOID_TAGS
        if self.skipping:
            if not void:
                self.skipping += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if not void and (tag in _SKIP_TAGS or classes & _QUOTE_CLASSES):
            self.skipping = 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag == "p" else "\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.skipping and tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS:
            return
        if self.skipping:
            self.skipping -= 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag == "p" else "\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(_SPACES.sub(" ", data.replace("\n", " ")))


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    return _squeeze(line.strip() for line in "".join(parser.parts).split("\n"))


def _squeeze(lines: Iterable[str]) -> str:
    """Join lines, with at most one blank line in a row and none at either end."""
    out: list[str] = []
    for line in lines:
        if not line.strip() and (not out or not out[-1].strip()):
            continue
        out.append(line.rstrip())
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


_ATTRIBUTION = re.compile(r"^\s*(?:On|Le|Am|El)\s.+(?:wrote|a écrit|schrieb|escribió)\s*:\s*$",
                          re.IGNORECASE | re.DOTALL)
_ORIGINAL = re.compile(r"^\s*-{2,}\s*(?:Original Message|Ursprüngliche Nachricht)\s*-{2,}\s*$",
                       re.IGNORECASE)
_OUTLOOK_RULE = re.compile(r"^\s*_{10,}\s*$")
_OUTLOOK_HEADER = re.compile(r"^\s*(?:From|De|Von)\s*:\s*\S", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*(?:Sent|Date|Envoyé|Gesendet|To|Subject)\s*:", re.IGNORECASE)
_MOBILE_FOOTER = re.compile(r"^\s*Sent from my \w+", re.IGNORECASE)


def _attribution_at(lines: Sequence[str], index: int) -> int:
    """How many lines an "On … wrote:" line starting here spans (clients wrap it), or 0."""
    if not re.match(r"^\s*(?:On|Le|Am|El)\s", lines[index], re.IGNORECASE):
        return 0
    for span in (1, 2, 3):
        joined = " ".join(line.strip() for line in lines[index:index + span])
        if index + span <= len(lines) and _ATTRIBUTION.match(joined):
            return span
    return 0


def strip_quotes_and_signature(text: str) -> str:
    """What the person wrote: no "> " lines, no "On … wrote:", no signature, no forwarded
    original below an Outlook-style header block."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.rstrip() == "--":  # the signature delimiter is "-- "; some clients trim it
            break
        if _ORIGINAL.match(line) or _OUTLOOK_RULE.match(line):
            break
        if _OUTLOOK_HEADER.match(line) and any(
            _OUTLOOK_NEXT.match(following) for following in lines[index + 1:index + 3]
        ):
            break
        if line.lstrip().startswith(">"):
            index += 1
            continue
        span = _attribution_at(lines, index)
        if span:
            index += span
            continue
        out.append(line)
        index += 1
    while out and (not out[-1].strip() or _MOBILE_FOOTER.match(out[-1])):
        out.pop()
    return _squeeze(out).strip()


def body_text(message: EmailMessage) -> str:
    """The person's words: the plain-text part if there is one, else the HTML part as text."""
    try:
        part = message.get_body(preferencelist=("plain", "html"))
    except (KeyError, LookupError, ValueError):
        part = None
    if part is None:
        return ""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, ValueError, UnicodeError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    if part.get_content_type() == "text/html":
        content = html_to_text(content)
    return strip_quotes_and_signature(content)


# -- replying -------------------------------------------------------------------------------


def reply_subject(subject: str) -> str:
    subject = subject.strip()
    if _REPLY_PREFIX.match(subject):
        return subject
    return f"Re: {subject}" if subject else "Re: your message"


def reply_references(references: Sequence[str], in_reply_to: str | None,
                     message_id: str) -> list[str]:
    """References for a reply: the parent's, then the parent; the root and the latest kept."""
    chain = list(references) or ([in_reply_to] if in_reply_to else [])
    chain.append(message_id)
    unique = list(dict.fromkeys(chain))
    if len(unique) > MAX_REFERENCES:
        unique = unique[:1] + unique[-(MAX_REFERENCES - 1):]
    return unique


def compose(*, sender: str, to: str, subject: str, message_id: str, in_reply_to: str | None,
            references: Sequence[str], text: str, conversation: str, kind: str,
            auto_submitted: str = "auto-replied", at: datetime | None = None) -> bytes:
    """A plain-text message in an existing thread, as the bytes SMTP sends and IMAP keeps.

    `X-Threadline-Conversation` and `X-Threadline-Kind` let the channel find its own replies
    in the replies mailbox again (for the conversation's address and threading headers).
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(at or datetime.now(UTC))
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = " ".join(references)
    message["Auto-Submitted"] = auto_submitted
    message["X-Threadline-Conversation"] = conversation
    message["X-Threadline-Kind"] = kind
    message.set_content(text)
    return message.as_bytes(policy=SMTP)
