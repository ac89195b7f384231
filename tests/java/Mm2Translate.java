// MirrorMaker 2's own translation of a group's committed offsets, from the
// checkpoints it emitted on the target cluster (RemoteClusterUtils, what an
// operator's failover script calls).
//
//   java -cp '<mm2 libs>/*' Mm2Translate.java <target bootstrap> <source alias> <group>
//
// Prints one JSON line: {"topic:partition": offset, ...} (empty while MM2
// has emitted no checkpoint for the group).
import java.time.Duration;
import java.util.*;

import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.connect.mirror.RemoteClusterUtils;

public class Mm2Translate {
    public static void main(String[] args) throws Exception {
        Map<String, Object> props = new HashMap<>();
        props.put("bootstrap.servers", args[0]);
        Map<TopicPartition, OffsetAndMetadata> t =
            RemoteClusterUtils.translateOffsets(props, args[1], args[2], Duration.ofSeconds(30));
        Map<String, Long> out = new TreeMap<>();
        t.forEach((tp, om) -> out.put(tp.topic() + ":" + tp.partition(), om.offset()));
        StringBuilder sb = new StringBuilder("{");
        String sep = "";
        for (Map.Entry<String, Long> e : out.entrySet()) {
            sb.append(sep).append('"').append(e.getKey()).append("\":").append(e.getValue());
            sep = ",";
        }
        System.out.println(sb.append('}'));
    }
}
