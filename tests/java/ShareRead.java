// A KIP-932 share consumer (KafkaShareConsumer) reading a topic for up to
// 20 s: how a share-group client fares against a cluster that does not
// advertise the share-group APIs (Switchyard does not route them).
//
//   java -cp '<kafka libs>/*' ShareRead.java <bootstrap> <topic> <group> <records>
//
// Prints {"got": n} once it has <records> (or after 20 s), or {"error": ..., "after_ms": ...}
// as soon as a poll fails.
import java.time.Duration;
import java.util.*;

import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.serialization.*;

public class ShareRead {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, args[2]);
        // A share group starts at the latest offset unless told otherwise.
        try (Admin a = Admin.create(p)) {
            a.incrementalAlterConfigs(Map.of(new ConfigResource(ConfigResource.Type.GROUP, args[2]), List.of(
                new AlterConfigOp(new ConfigEntry("share.auto.offset.reset", "earliest"), AlterConfigOp.OpType.SET))))
                .all().get();
        } catch (Exception e) {
            System.out.println("{\"config_error\":\"" + e.getClass().getSimpleName() + "\"}");
        }
        long t0 = System.currentTimeMillis();
        try (ShareConsumer<String, String> c = new KafkaShareConsumer<>(p, new StringDeserializer(), new StringDeserializer())) {
            c.subscribe(List.of(args[1]));
            int got = 0;
            long end = t0 + 20_000;
            int want = Integer.parseInt(args[3]);
            while (got < want && System.currentTimeMillis() < end) {
                try {
                    got += c.poll(Duration.ofMillis(1000)).count();
                } catch (Exception e) {
                    String why = (e.getClass().getSimpleName() + ": " + e.getMessage()).replace("\\", "/").replace("\"", "'");
                    System.out.println("{\"error\":\"" + why + "\",\"after_ms\":" + (System.currentTimeMillis() - t0) + "}");
                    return;
                }
            }
            System.out.println("{\"got\":" + got + "}");
        }
    }
}
