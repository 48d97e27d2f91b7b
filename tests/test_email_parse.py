"""Reading email without any server: the .eml fixtures are written the way real clients and
receiving servers write them (Gmail, Outlook, Postfix with OpenDKIM/OpenDMARC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.email_parse import (
    ParsedEmail,
    aligned,
    compose,
    html_to_text,
    parse_authentication_results,
    parse_bytes,
    read,
    reply_references,
    reply_subject,
    strip_quotes_and_signature,
    thread_root,
)

FIXTURES = Path(__file__).parent / "fixtures" / "email"
US = "mx.threadline.test"
BOT = "assistant@threadline.test"


def load(name: str) -> ParsedEmail:
    return read((FIXTURES / name).read_bytes(), own_address=BOT, authserv_id=US)


# -- the words a person wrote --


def test_plain_text_is_preferred_and_quotes_attribution_and_signature_are_stripped():
    mail = load("gmail_reply.eml")
    # The attribution line is wrapped over two lines, the "-- " delimiter is QP-encoded.
    assert mail.text == "And what's my budget again?\n\nAlice"


def test_html_only_mail_is_turned_into_text():
    text = load("html_only.eml").text
    assert text == ("Hello there,\n\nMy city is Paris & my team is R&D.\nSecond line <here>.\n\n"
                    "- one\n- two\n\nCafé at noon?")
    for hidden in ("color: red", "ignored title", "alert", "old message", "nested quote",
                   "Bob Builder"):
        assert hidden not in text


def test_html_quotes_from_gmail_are_left_out():
    html = ('<div dir="ltr">Yes please<br></div><br><div class="gmail_quote">'
            '<div class="gmail_attr">On Mon, Alice wrote:<br></div>'
            '<blockquote class="gmail_quote">old <b>text</b><br>more</blockquote></div>')
    assert html_to_text(html) == "Yes please"


def test_an_outlook_reply_ends_at_its_header_block():
    assert load("outlook_reply.eml").text == "what's my budget?"


def test_a_bottom_posted_answer_keeps_the_words_below_the_quote():
    # French attribution, nested quotes, a trimmed "--" delimiter, a mobile footer.
    assert load("bottom_posted.eml").text == "remember that the review is on Monday"


@pytest.mark.parametrize("body, expected", [
    ("plain question", "plain question"),
    ("answer\n\nOn Mon, 1 Jan 2024, Bob <b@x.co> wrote:\n> old\n> older", "answer"),
    ("> quoted\nreply inline\n> more quoted\nsecond inline", "reply inline\nsecond inline"),
    ("text\n-- \nsig line\nmore sig", "text"),
    ("text\n\n-----Original Message-----\nFrom: x\nold", "text"),
    ("On Friday I wrote the plan.\nIt is done.", "On Friday I wrote the plan.\nIt is done."),
    ("hello\r\n\r\n\r\n\r\nworld\r\n\r\n", "hello\n\nworld"),
    ("> only a quote", ""),
])
def test_quote_and_signature_stripping(body, expected):
    assert strip_quotes_and_signature(body) == expected


# -- threads --


def test_the_thread_root_is_the_first_reference():
    mail = load("gmail_reply.eml")
    assert mail.thread == "<CAF=root-1234@mail.acme.com>"
    assert mail.message_id == "<CAF=reply-5678@mail.acme.com>"
    assert mail.in_reply_to == "<tl.0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6@threadline.test>"


def test_without_references_the_root_is_in_reply_to_then_the_message_itself():
    assert load("outlook_reply.eml").thread == "<tl.aaaa@threadline.test>"
    assert thread_root([], None, "<own@x>") == "<own@x>"
    assert thread_root(["<a@x>", "<b@x>"], "<b@x>", "<own@x>") == "<a@x>"


def test_a_message_without_message_id_gets_a_stable_one():
    raw = (FIXTURES / "no_message_id.eml").read_bytes()
    first, again = read(raw), read(raw)
    assert first.message_id == again.message_id
    assert first.message_id.endswith("@threadline.invalid>")
    assert first.thread == first.message_id
    assert first.text == "" and first.subject == "my color is teal"


def test_the_sender_is_the_one_from_address_lowercased():
    mail = load("gmail_reply.eml")
    assert (mail.sender, mail.sender_name, mail.sender_domain) == (
        "alice@acme.com", "Alice Example", "acme.com")
    two = b"From: a@x.co, b@x.co\nSubject: s\n\nhi\n"
    assert read(two).sender is None
    none = b"Subject: s\n\nhi\n"
    assert read(none).sender is None
    group = b"From: undisclosed-recipients:;\n\nhi\n"
    assert read(group).sender is None
    # An encoded display name that decodes to another address is only a name.
    tricky = b"From: =?utf-8?q?alice@acme.com=2C_bob?= <mallory@evil.example>\n\nhi\n"
    assert read(tricky).sender == "mallory@evil.example"
    twice = b"From: alice@acme.com\nFrom: mallory@evil.example\n\nhi\n"
    assert read(twice).sender is None


# -- who really sent it --


def test_dmarc_pass_from_our_server_verifies():
    assert load("gmail_reply.eml").verified_by == "dmarc=pass"
    assert load("bottom_posted.eml").verified_by == "dmarc=pass"


def test_an_aligned_dkim_pass_verifies_even_without_dmarc():
    assert load("html_only.eml").verified_by == "dkim=pass header.d=acme.com"
    # Relaxed alignment: a signature by acme.com covers carol@eu.acme.com; the authserv-id
    # is compared without case, and a version number after it is allowed.
    assert load("outlook_reply.eml").verified_by == "dkim=pass header.d=acme.com"


def test_results_from_another_authserv_id_are_ignored():
    # A pass written by the sender (or any server but ours) does not count, even one whose
    # id merely starts with ours; ours says fail.
    assert load("forged_authres.eml").verified_by is None
    assert load("foreign_authres_only.eml").verified_by is None
    raw = (FIXTURES / "forged_authres.eml").read_bytes()
    assert read(raw, authserv_id="mx.attacker.example").verified_by == "dmarc=pass"


def test_a_dkim_pass_for_another_domain_does_not_verify():
    assert load("dkim_unaligned.eml").verified_by is None


def test_without_an_authserv_id_nobody_is_verified():
    raw = (FIXTURES / "gmail_reply.eml").read_bytes()
    assert read(raw).verified_by is None


def test_dmarc_pass_for_a_different_from_domain_does_not_verify():
    raw = (b"Authentication-Results: mx.threadline.test; dmarc=pass header.from=other.com\n"
           b"From: alice@acme.com\nSubject: s\n\nhi\n")
    assert read(raw, authserv_id=US).verified_by is None


def test_dkim_identity_header_i_can_vouch():
    raw = (b"Authentication-Results: mx.threadline.test; dkim=pass header.i=alice@acme.com\n"
           b"From: alice@acme.com\nSubject: s\n\nhi\n")
    assert read(raw, authserv_id=US).verified_by == "dkim=pass header.i=acme.com"


def test_authentication_results_parsing():
    value = ('mx.threadline.test 1; dkim/1=pass (2048-bit key; unprotected) header.d=acme.com '
             'header.b="Ab;Cd"; spf=pass (sender "ok") smtp.mailfrom=a@acme.com; '
             'dmarc=FAIL reason="policy; aligned" header.from=acme.com; none')
    server, results = parse_authentication_results(value)
    assert server == "mx.threadline.test"
    assert [(r.method, r.result) for r in results] == [
        ("dkim", "pass"), ("spf", "pass"), ("dmarc", "fail")]
    assert results[0].properties == {"header.d": "acme.com", "header.b": "Ab;Cd"}
    assert results[2].properties["reason"] == "policy; aligned"
    assert parse_authentication_results("mx.threadline.test; none") == ("mx.threadline.test", [])


@pytest.mark.parametrize("signer, domain, ok", [
    ("acme.com", "acme.com", True),
    ("acme.com", "eu.acme.com", True),
    ("@acme.com", "acme.com", True),
    ("ACME.COM", "acme.com", True),
    ("notacme.com", "acme.com", False),
    ("eu.acme.com", "acme.com", False),
    ("com", "acme.com", False),
    ("", "acme.com", False),
])
def test_dkim_alignment(signer, domain, ok):
    assert aligned(signer, domain) is ok


# -- machine mail --


@pytest.mark.parametrize("name, reason", [
    ("auto_reply.eml", "Auto-Submitted: auto-replied"),
    ("bounce.eml", "null return path"),
    ("list_mail.eml", "Precedence: list"),
])
def test_machine_mail_is_recognised(name, reason):
    assert load(name).automated == reason


@pytest.mark.parametrize("headers, automated", [
    (b"Auto-Submitted: no\n", False),
    (b"Auto-Submitted: auto-generated\n", True),
    (b"Precedence: bulk\n", True),
    (b"Precedence: junk\n", True),
    (b"List-Id: <x.lists.acme.com>\n", True),
    (b"Return-Path: < >\n", True),
    (b"X-Autorespond: yes\n", True),
    (b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\n",
     True),
    (b"", False),
])
def test_automation_headers(headers, automated):
    raw = headers + b"From: alice@acme.com\nSubject: s\n\nhi\n"
    assert (read(raw).automated is not None) is automated


def test_mailer_daemon_and_our_own_address_are_machine_mail():
    assert read(b"From: MAILER-DAEMON@mx.acme.com\n\nx\n").automated == "mailer-daemon sender"
    assert read(b"From: Assistant@Threadline.test\n\nx\n",
                own_address=BOT).automated == "our own address"
    assert load("outlook_reply.eml").automated is None  # "Auto-Submitted: no" is a person


# -- replying --


@pytest.mark.parametrize("subject, expected", [
    ("Budget", "Re: Budget"),
    ("Re: Budget", "Re: Budget"),
    ("RE: Budget", "RE: Budget"),
    ("AW: Budget", "AW: Budget"),
    ("Re[2]: Budget", "Re[2]: Budget"),
    ("Regarding budget", "Re: Regarding budget"),
    ("", "Re: your message"),
])
def test_reply_subject(subject, expected):
    assert reply_subject(subject) == expected


def test_reply_references_keep_the_root_and_the_latest():
    assert reply_references([], None, "<m@x>") == ["<m@x>"]
    assert reply_references([], "<p@x>", "<m@x>") == ["<p@x>", "<m@x>"]
    assert reply_references(["<r@x>", "<p@x>"], "<p@x>", "<m@x>") == ["<r@x>", "<p@x>", "<m@x>"]
    long = [f"<{i}@x>" for i in range(40)]
    kept = reply_references(long, None, "<m@x>")
    assert len(kept) == 20 and kept[0] == "<0@x>" and kept[-2:] == ["<39@x>", "<m@x>"]


def test_a_composed_reply_threads_and_says_it_is_automatic():
    data = compose(sender=BOT, to="alice@acme.com", subject="Re: Budget",
                   message_id="<tl.1@threadline.test>", in_reply_to="<m@acme.com>",
                   references=["<root@acme.com>", "<m@acme.com>"], text="Your budget is $5,000.",
                   conversation="<root@acme.com>", kind="answer")
    assert b"\r\n" in data
    message = parse_bytes(data)
    assert message["In-Reply-To"] == "<m@acme.com>"
    assert message["References"] == "<root@acme.com> <m@acme.com>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Threadline-Conversation"] == "<root@acme.com>"
    assert message.get_content().strip() == "Your budget is $5,000."
    # Our own reply, read back, is machine mail: it can never start a loop.
    assert read(data, own_address=BOT).automated is not None


def test_a_forged_pass_below_our_servers_real_header_does_not_verify():
    # Our server wrote the top header (fail); the sender wrote one with our id below it.
    raw = (b"Authentication-Results: mx.threadline.test; dmarc=fail header.from=acme.com\n"
           b"Authentication-Results: mx.threadline.test; dmarc=pass header.from=acme.com\n"
           b"From: carol@acme.com\nSubject: s\n\nhi\n")
    assert read(raw, authserv_id=US).verified_by is None
    # Two passes claiming our id are just as untrustworthy: one of them is forged.
    twice = raw.replace(b"dmarc=fail", b"dmarc=pass")
    assert read(twice, authserv_id=US).verified_by is None


def test_a_dmarc_pass_that_names_no_domain_vouches_for_none():
    raw = (b"Authentication-Results: mx.threadline.test; dmarc=pass\n"
           b"From: carol@acme.com\nSubject: s\n\nhi\n")
    assert read(raw, authserv_id=US).verified_by is None
