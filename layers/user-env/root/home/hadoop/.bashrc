# ~/.bashrc of the hadoop user (strata user-env layer).
# Version-neutral: the stable paths below point at this image's Hadoop and JDK
# (/opt/hadoop -> /opt/hadoop-X.Y.Z from the per-version layer, /opt/java from the JDK layer).
export JAVA_HOME=/opt/java
export HADOOP_HOME=/opt/hadoop
export HADOOP_CONF_DIR=/etc/hadoop
case ":$PATH:" in
    *":$HADOOP_HOME/bin:"*) ;;
    *) export PATH="$HADOOP_HOME/bin:$HADOOP_HOME/sbin:$JAVA_HOME/bin:$PATH" ;;
esac
# Version-specific settings (cluster name, directories) from the image's etc/hadoop.
[ -r /etc/hadoop/strata-cluster.env ] && . /etc/hadoop/strata-cluster.env

[ -z "$PS1" ] && return
PS1='\u@\h:\w${HADOOP_VERSION:+ [hadoop $HADOOP_VERSION]}\$ '
alias ll='ls -l'
