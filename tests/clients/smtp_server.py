"""A real SMTP server for the e-mail output's tests: aiosmtpd (installed
in the test virtualenv by scripts/install-test-deps.sh) on 127.0.0.1:PORT,
requiring STARTTLS with CERT/KEY and then AUTH as USER/PASSWORD. Each
message received is written to MAILDIR as N.eml, with N.json holding the
envelope (sender, recipients, the authenticated user). Prints "ready" once
listening; runs until killed.

usage: smtp_server.py PORT CERT KEY USER PASSWORD MAILDIR
"""

import json
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    port, cert, key, user, password, maildir = sys.argv[1:7]
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

    class Handler:
        count = 0

        async def handle_DATA(self, server, session, envelope):
            Handler.count += 1
            base = os.path.join(maildir, str(Handler.count))
            with open(base + ".json", "w") as f:
                json.dump(
                    {
                        "from": envelope.mail_from,
                        "to": envelope.rcpt_tos,
                        "user": session.auth_data.decode() if session.auth_data else None,
                        "tls": session.ssl is not None,
                    },
                    f,
                )
            with open(base + ".eml", "wb") as f:
                f.write(envelope.original_content)
            return "250 Message accepted for delivery"

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=int(port),
        server_hostname="localhost",
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
