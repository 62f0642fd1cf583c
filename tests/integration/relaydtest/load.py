"""Load while relayd is killed or its disk fails: SMTP client threads
that send one message after another (Clients) and fake Graph rules that
keep requests in flight (latency_rules)."""
import smtplib
import threading
import time

from relaydtest.smtp import QUEUED_RE, simple

CLIENTS = 4                 # SMTP client threads
SENDERS = 8                 # envelope senders = Graph mailboxes
PAUSE = 0.01                # s between a client's messages: about what
                            # 16 workers deliver at 20-80 ms, so that the
                            # queue left to drain at the end stays small


def latency_rules(low_ms=20, high_ms=80, steps=7):
    """Fault rules that delay every request by low..high ms, evenly: each
    rule's "p" is its share of what the rules before it left."""
    delays = [low_ms + (high_ms - low_ms) * i / (steps - 1)
              for i in range(steps)]
    return [{"delay_ms": d, "count": -1, "p": 1.0 / (steps - i)}
            for i, d in enumerate(delays)]


class Clients:
    """CLIENTS threads sending one message after another over kept
    connections; a lost connection is opened again (while relayd is down,
    until it is back). accepted: token -> queue id, for 250s only."""
    pause = PAUSE

    def __init__(self, d):
        self.d = d
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted = {}
        self.unanswered = 0     # DATA sent, connection lost before a reply
        self.errors = []        # anything but a lost connection
        self.threads = [threading.Thread(target=self.run, args=(i,),
                                         daemon=True)
                        for i in range(CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "an SMTP client thread hangs"

    def message(self, token, sender):
        return simple("crash " + token, frm=sender)

    def run(self, tid):
        n = 0
        while not self.stop.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", self.d.port, timeout=10)
            except OSError:
                time.sleep(0.02)        # relayd is down or starting
                continue
            in_data = False
            try:
                s.ehlo("crash.test")
                while not self.stop.is_set():
                    n += 1
                    token = "%d-%d" % (tid, n)
                    sender = "crash%d@contoso.test" % (n % SENDERS)
                    code, _ = s.mail(sender)
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, "MAIL")
                    code, _ = s.rcpt("rcpt@fabrikam.test")
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, "RCPT")
                    in_data = True
                    code, text = s.data(self.message(token, sender))
                    in_data = False
                    m = QUEUED_RE.match("%d %s" % (code, text.decode()))
                    if not m:
                        raise smtplib.SMTPResponseException(code, text)
                    with self.lock:
                        self.accepted[token] = m.group(1)
                    time.sleep(self.pause)
            except (smtplib.SMTPServerDisconnected, OSError):
                # Killed under us: this message does not count.
                if in_data:
                    with self.lock:
                        self.unanswered += 1
            except smtplib.SMTPException as e:
                with self.lock:
                    self.errors.append(repr(e))
                time.sleep(0.05)
            finally:
                s.close()
