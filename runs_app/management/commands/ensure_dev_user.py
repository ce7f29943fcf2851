from io import StringIO
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

BODY = '{"messages": [{"role": "user", "content": "hello"}], "stream": true}'


class Command(BaseCommand):
    help = "`make run`: create the dev user (admin/admin) and print a ready-to-paste curl line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", default="8000")

    def handle(self, *args: Any, **options: Any) -> None:
        out = StringIO()
        call_command("create_api_user", "admin", password="admin", staff=True, stdout=out)
        token = out.getvalue().strip()
        base = f"http://127.0.0.1:{options['port']}"
        self.stdout.write(f"dev user: admin / admin (admin at {base}/admin/), API token: {token}")
        self.stdout.write(
            f"try: curl -sN -H 'Authorization: Token {token}' -H 'Content-Type: application/json' "
            f"-d '{BODY}' {base}/api/v1/runs"
        )
