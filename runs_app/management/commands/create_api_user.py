from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create (or reuse) a user and print its API token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--password", default=None, help="also allow session / admin login")
        parser.add_argument("--staff", action="store_true", help="give admin access")

    def handle(self, *args: Any, **options: Any) -> None:
        user, _created = get_user_model().objects.get_or_create(username=options["username"])
        if options["password"]:
            user.set_password(options["password"])
        if options["staff"]:
            user.is_staff = user.is_superuser = True
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
