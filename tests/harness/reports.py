"""DSNs (RFC 3464) and complaint reports (ARF, RFC 5965) as receiving servers send them,
built with the standard library's email package, for the parser, store and e2e tests."""

from __future__ import annotations

from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


def original_message(to: str, *, feedback_id: str = "", sender: str = "shop@acme.example"
                     ) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Your order"
    message["Message-ID"] = "<order-1@acme.example>"
    if feedback_id:
        message["CFBL-Address"] = "fbl@bounces.relay.example; report=arf"
        message["CFBL-Feedback-ID"] = feedback_id
    message.set_content("Thank you for your order.\n")
    return message


def dsn(recipients: list[tuple[str, str, str, str]], *, return_path: str = "",
        original_recipient: bool = True, headers_only: bool = False) -> bytes:
    """recipients: (address, action, status, diagnostic) per recipient."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.receiver.example (Mail Delivery System)"
    report["To"] = return_path or "b-unknown@bounces.relay.example"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report.attach(MIMEText("I'm sorry to have to inform you that your message could not "
                           "be delivered.\n"))
    status = MIMEBase("message", "delivery-status")
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; mx.receiver.example"
    per_message["Arrival-Date"] = "Fri, 4 Dec 2026 18:00:00 +0000"
    status.attach(per_message)
    for address, action, code, diagnostic in recipients:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {address}"
        if original_recipient:
            block["Original-Recipient"] = f"rfc822;{address}"
        block["Action"] = action
        block["Status"] = code
        if diagnostic:
            block["Diagnostic-Code"] = f"smtp; {diagnostic}"
        status.attach(block)
    report.attach(status)
    original = original_message(recipients[0][0] if recipients else "x@example.net")
    if headers_only:
        part = MIMEText(str(original).split("\n\n", 1)[0] + "\n", "rfc822-headers")
        report.attach(part)
    else:
        report.attach(MIMEMessage(original))
    return report.as_bytes()


def arf(original: Message, *, feedback_type: str = "abuse", rcpt_to: str = "",
        headers_only: bool = False) -> bytes:
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "feedback@isp.example"
    report["To"] = "fbl@bounces.relay.example"
    report["Subject"] = "Abuse report"
    report.attach(MIMEText("This is an email abuse report for an email message received "
                           "from IP 192.0.2.25.\n"))
    fields = (f"Feedback-Type: {feedback_type}\nUser-Agent: SomeGenerator/1.0\nVersion: 1\n"
              "Source-IP: 192.0.2.25\n")
    if rcpt_to:
        fields += f"Original-Rcpt-To: <{rcpt_to}>\n"
    part = MIMEBase("message", "feedback-report")
    part.set_payload(fields)
    report.attach(part)
    if headers_only:
        report.attach(MIMEText(str(original).split("\n\n", 1)[0] + "\n", "rfc822-headers"))
    else:
        report.attach(MIMEMessage(original))
    return report.as_bytes()
