export GREETING="hello from .profile.d"
