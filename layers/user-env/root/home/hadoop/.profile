# ~/.profile of the hadoop user (strata user-env layer; the same in every Hadoop version).
if [ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ]; then
    . "$HOME/.bashrc"
fi
